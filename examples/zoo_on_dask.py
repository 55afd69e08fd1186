"""Rank a zoo on an existing Dask cluster: here a LocalCluster this script starts, as a stand-in for yours.

    python examples/zoo_on_dask.py                               # the demo zoo on DSB2018, 2 local workers
    python examples/zoo_on_dask.py ZOO TARGET [TARGET ...] --workers 4 --output-dir zoo-ranking

With a real cluster, start ``dask scheduler`` and ``dask worker tcp://HOST:8786 --nworkers N --nthreads 1`` on the
machines, and pass ``tcp://HOST:8786`` where this script passes ``cluster.scheduler_address``. Every worker needs
bioimage-cte installed, the same zoo and image paths, the Prefect server (``PREFECT_API_URL``; this script starts
a temporary one when none is set, before the workers, so that they inherit its address) and the results store on a
disk local to its machine. One thread per worker: torch already uses the worker's cores within one prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API the run and the workers use: ``PREFECT_API_URL`` if set, else a temporary server."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bioimage_cte_flows.servers import temporary_server

    with temporary_server() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url  # worker processes started from here on inherit it
        try:
            yield api_url
        finally:
            del os.environ["PREFECT_API_URL"]


def main(argv: Sequence[str] | None = None):
    """Start the cluster, rank the zoo on it, print the summary; returns the run's ``ZooRunSummary``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?", default=str(ROOT / "resources" / "zoo"))
    parser.add_argument("targets", nargs="*", default=[str(ROOT / "resources" / "data" / "dsb2018")])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tag", default="nuclei")
    parser.add_argument("--output-dir", default="zoo-ranking-dask")
    parser.add_argument("--store", default=None, help="results database (default: ~/.cache/bioimage-cte/...)")
    args = parser.parse_args(argv)

    from distributed import LocalCluster

    import bioimage_cte_flows  # noqa: F401  (the project's Prefect settings, before prefect is imported)
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    with prefect_api(), LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster:
        print(f"Dask scheduler at {cluster.scheduler_address} with {args.workers} workers")
        run = ZooRunOptions(dask_address=cluster.scheduler_address, output_dir=args.output_dir,
                            store_path=args.store, reports=False)
        summary = run_zoo_ranking(args.zoo, args.targets, RankOptions(tag=args.tag), run, on_progress=print)
    print(summary.message)
    for target, path in summary.rankings.items():
        print(f"ranking of {target}: {path}")
    if summary.leaderboard:
        print(f"leaderboard: {summary.leaderboard}")
    return summary


if __name__ == "__main__":
    main()
