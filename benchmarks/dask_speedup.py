"""Speed-up of the zoo-ranking flow on a local Dask cluster with 2 worker processes over 1.

    cd /path/to/bioimage-cte && .venv/bin/python benchmarks/dask_speedup.py
        [--zoo resources/zoo] [--targets resources/data/dsb2018 resources/data/nuclei-tiny-crowded] [--workers 1 2]
        [--seed 0]

Every run starts from an empty results store, so every model x target pair is scored. The runs
share one temporary Prefect server, started before any timing. Each worker process runs torch
with one thread. Two numbers per comparison:

- end to end: the whole flow run, including starting the cluster, each worker's first imports
  (prefect, torch and bioimageio.core: about 13 s per fresh process on 2 cores) and closing it;
- scoring: from the first model starting to the last one finishing (from the store's records),
  which is what more workers can speed up.

The fixed cost is the same for 1 and 2 workers, so the end-to-end speed-up grows with the work:
one target of the demo zoo (17 models x 4 images) is too little to hide it. Every run ranks with the same
:class:`~bioimage_cte.run.options.RankOptions` (``cte-dropout``, ``--seed``), so the rankings must be equal. Run from
the repository root (prefect.toml keeps it quiet and offline), on otherwise idle CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bioimage_cte.run.options import RankOptions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGETS = [ROOT / "resources" / "data" / "dsb2018", ROOT / "resources" / "data" / "nuclei-tiny-crowded"]


@dataclass(frozen=True)
class Run:
    wall: float
    scoring: float
    scored: int
    rankings: dict[str, list[str]]


def _run(zoo: Path, targets: list[Path], workers: int, tmp: Path, options: RankOptions) -> Run:
    from bioimage_cte.run.store import ResultStore
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    out = tmp / f"workers-{workers}"
    start = time.perf_counter()
    run = ZooRunOptions(store_path=str(out / "results.sqlite"), output_dir=str(out), reports=False,
                        dask_address="local", workers=workers, torch_threads=1)
    summary = run_zoo_ranking(zoo, targets, options, run)
    wall = time.perf_counter() - start
    records = ResultStore(summary.store).records().values()
    ends = [datetime.datetime.fromisoformat(r.created).timestamp() for r in records]
    scoring = max(ends) - min(end - r.seconds for end, r in zip(ends, records, strict=True))
    rankings = {t: [m["name"] for m in json.loads(Path(p).read_text())["models"]] for t, p in summary.rankings.items()}
    return Run(wall, scoring, summary.scored, rankings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "resources" / "zoo")
    parser.add_argument("--targets", type=Path, nargs="+", default=DEFAULT_TARGETS)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = RankOptions(estimator="cte-dropout", seed=args.seed)
    for name, value in {"TQDM_DISABLE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(ROOT))

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    n_models = len(list(args.zoo.glob("*.zip")))
    print(f"{n_models} packages x {len(args.targets)} targets ({', '.join(t.name for t in args.targets)}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the runs")
    runs: dict[int, Run] = {}
    with tempfile.TemporaryDirectory() as tmp, SubprocessASGIServer() as server, \
            temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        for workers in args.workers:
            run = runs[workers] = _run(args.zoo, args.targets, workers, Path(tmp), options)
            print(f"  {workers} worker(s): {run.wall:6.1f} s end to end, {run.scoring:6.1f} s scoring, "
                  f"{run.scored} pairs scored")
    base = runs[args.workers[0]]
    for workers in args.workers[1:]:
        run = runs[workers]
        same = "same rankings" if run.rankings == base.rankings else "DIFFERENT rankings"
        print(f"speed-up {workers} workers over {args.workers[0]}: {base.wall / run.wall:.2f}x end to end, "
              f"{base.scoring / run.scoring:.2f}x scoring ({same})")
    return 0


if __name__ == "__main__":  # Dask spawns worker processes, which import this file again
    sys.exit(main())
