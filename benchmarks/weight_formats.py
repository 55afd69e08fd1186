"""Grey-box CTE on one network in three weights formats, timed in one run (prints a table with ratios; not a test).

    python benchmarks/weight_formats.py [--images 10] [--repeats 3] [--threads 1]

The same trained network (``nuclei-versatile``) as ``pytorch_state_dict`` (forward hook on the torch network), as
``onnx`` (``nuclei-versatile-onnx``: the ONNX graph rewritten with a channel-mask input, run by onnxruntime) and,
for the path through torchscript, ``nuclei-dim-blurry`` against ``nuclei-dim-blurry-torchscript`` (exported to
ONNX when loaded). Each row is :func:`bioimage_cte.run.scoring.score_model` with ``cte-dropout`` (model loading, the
clean and the perturbed pass of every image, scoring), the median of ``--repeats`` runs; the ratio is against the
state-dict run of the same network in the same process. The scores of both formats are printed too: they must
agree (same masks, same network).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bioimage_cte.cte.registry import make_estimator  # noqa: E402
from bioimage_cte.predict.images import list_images  # noqa: E402
from bioimage_cte.run.options import RankOptions  # noqa: E402
from bioimage_cte.run.scoring import score_model  # noqa: E402
from bioimage_cte.zoo.sources import find_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
PAIRS = (("nuclei-versatile", "nuclei-versatile-onnx"), ("nuclei-dim-blurry", "nuclei-dim-blurry-torchscript"))


def timed(name: str, paths, options: RankOptions, repeats: int) -> tuple[float, float, str]:
    """(median seconds, median score, weights format) of scoring one package over the images."""
    (source,) = find_models([ZOO / f"{name}.zip"])
    seconds, score, fmt = [], 0.0, ""
    for _ in range(repeats):
        start = time.perf_counter()
        result = score_model(source, paths, [make_estimator("cte-dropout")], options)
        seconds.append(time.perf_counter() - start)
        if "cte-dropout" in result.failures:
            raise SystemExit(f"{name}: {result.failures['cte-dropout'][1]}")
        score, fmt = float(np.median(result.per_image["cte-dropout"])), result.weights["format"]
    return statistics.median(seconds), score, fmt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10, help="images of nuclei-tiny-crowded (8) and dsb2018 (4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per package; the median is reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; onnxruntime gets the same number (on a shared machine, 1 is fairest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = ROOT / "resources" / "data"
    paths = (list_images(data / "nuclei-tiny-crowded" / "images") + list_images(data / "dsb2018" / "images"))
    paths = paths[: args.images]
    options = RankOptions(seed=0)
    print(f"{len(paths)} images, cte-dropout (clean + 1 perturbed pass each), median of {args.repeats} runs, CPU, "
          f"{args.threads} thread(s)")
    print("| package | weights | seconds | ratio to state dict | median score |")
    print("|---|---|---|---|---|")
    for trained, variant in PAIRS:
        base_s, base_score, base_fmt = timed(trained, paths, options, args.repeats)
        var_s, var_score, var_fmt = timed(variant, paths, options, args.repeats)
        print(f"| {trained} | {base_fmt} | {base_s:.2f} | 1.00x | {base_score:.4f} |")
        print(f"| {variant} | {var_fmt} | {var_s:.2f} | {var_s / base_s:.2f}x | {var_score:.4f} |")


if __name__ == "__main__":
    main()
