"""Wall time of the default estimator against ``cte-dropout`` on the demo ranking, side by side in one run.

    python benchmarks/default_walltime.py [--estimators cte-dropout cte tta] [--repeats 3] [--budget all]

Runs :func:`bioimage_cte.run.pipeline.rank` as ``scripts/demo.sh`` does (the demo zoo's nuclei models on the DSB2018
images), each estimator in turn, ``--repeats`` rounds interleaved so a busy machine slows every estimator alike, and
prints each one's median wall and CPU time and its ratio to ``cte-dropout``'s (issue #13's bar for the default:
at most 2x). The first estimator given is the reference.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from bioimage_cte.run.options import RankOptions  # noqa: E402
from bioimage_cte.run.pipeline import rank  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimators", nargs="+", default=["cte-dropout", RankOptions().estimator, "tta"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", default="all")
    args = parser.parse_args()
    names = list(dict.fromkeys(args.estimators))
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    rank([ROOT / "resources" / "zoo"], ROOT / "resources" / "data" / "dsb2018" / "images",
         RankOptions(estimator=names[0], tag="nuclei"))  # warm-up: imports and file caches
    for _ in range(args.repeats):
        for name in names:
            options = RankOptions(estimator=name, tag="nuclei", budget=args.budget)
            w, c = time.perf_counter(), time.process_time()
            rank([ROOT / "resources" / "zoo"], ROOT / "resources" / "data" / "dsb2018" / "images", options)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    ref = names[0]
    print(f"| estimator | wall s (median of {args.repeats}) | wall / {ref} | CPU s | CPU / {ref} |")
    print("|---|---|---|---|---|")
    for name in names:
        w, c = float(np.median(wall[name])), float(np.median(cpu[name]))
        print(f"| {name} | {w:.1f} | {w / np.median(wall[ref]):.2f} | {c:.1f} | {c / np.median(cpu[ref]):.2f} |")


if __name__ == "__main__":
    main()
