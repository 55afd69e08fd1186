"""Deploy the weekly zoo ranking of ``flows/prefect.yaml`` to a process work pool, and run it once with a worker.

    prefect server start --background
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python examples/deploy_work_pool.py --check         # validate flows/prefect.yaml only (no server needed)
    python examples/deploy_work_pool.py                 # create the pool, deploy (with the schedule of the file)
    python examples/deploy_work_pool.py --run-now --zoo resources/zoo --target resources/data/dsb2018
                                        # ... and run it once now, executed by `prefect worker start --run-once`
    python examples/deploy_work_pool.py --temporary-server --run-now ...   # all of it without a server of yours

The file's parameters are the run's ``RankOptions`` (``options``) and ``ZooRunOptions`` (``run``); ``--check``
builds both from it, so a typo in a key fails here, in seconds, rather than in the first scheduled run. Relative
paths in the file are relative to ``BIOIMAGE_CTE_ROOT`` (this repository by default), the pull step's folder. A
long-lived worker is ``prefect worker start --pool local-process``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "flows" / "prefect.yaml"


def check_deployments(prefect_file: Path = PREFECT_FILE, root: Path = ROOT) -> list[dict[str, Any]]:
    """The deployments of a ``prefect.yaml``, each checked against the flow it names.

    Raises
    ------
    ValueError
        An entrypoint that does not exist, a parameter the flow does not take, options or run settings the library
        refuses, a missing work pool, or a schedule without a cron.
    """
    import bioimage_cte_flows  # noqa: F401  (the project's Prefect settings, before prefect is imported)
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, zoo_ranking_flow

    spec = yaml.safe_load(Path(prefect_file).read_text())
    deployments = spec.get("deployments") or []
    if not deployments:
        raise ValueError(f"{prefect_file} declares no deployment")
    accepted = set(inspect.signature(zoo_ranking_flow.fn).parameters)
    for d in deployments:
        where = f"{prefect_file}: deployment {d.get('name')!r}"
        path, _, function = str(d.get("entrypoint", "")).partition(":")
        if not (root / path).is_file() or function != zoo_ranking_flow.fn.__name__:
            raise ValueError(f"{where}: entrypoint {d.get('entrypoint')!r} is not flows/zoo_ranking.py:"
                             "zoo_ranking_flow")
        params = d.get("parameters") or {}
        unknown = set(params) - accepted
        if unknown:
            raise ValueError(f"{where}: the flow takes no parameter {', '.join(sorted(unknown))}")
        try:
            RankOptions.from_json_dict(params.get("options") or {})
            ZooRunOptions(**(params.get("run") or {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
        if not (d.get("work_pool") or {}).get("name"):
            raise ValueError(f"{where}: no work_pool.name")
        if any("cron" not in s for s in d.get("schedules") or []):
            raise ValueError(f"{where}: a schedule without a cron")
    return deployments


def _prefect(*args: str, root: Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "BIOIMAGE_CTE_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=root, env=env, check=check, text=True,
                          capture_output=True, **kwargs)


def ensure_pool(name: str, *, root: Path = ROOT) -> None:
    """Create the process work pool ``name`` unless the server has it."""
    if _prefect("work-pool", "inspect", name, root=root, check=False).returncode != 0:
        _prefect("work-pool", "create", name, "--type", "process", root=root)


def deploy(prefect_file: Path = PREFECT_FILE, *, root: Path = ROOT) -> str:
    """``prefect deploy --all`` of the file (needs ``PREFECT_API_URL``); returns its output."""
    done = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), root=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def run_once(deployment: str, pool: str, parameters: dict[str, Any], *, root: Path = ROOT,
             timeout: float = 900) -> Any:
    """Create a flow run of ``deployment`` now and let one worker run it (``--run-once``); returns the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    _prefect("worker", "start", "--pool", pool, "--run-once", root=root, timeout=timeout)

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    return asyncio.run(read())


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    parser.add_argument("--root", type=Path, default=ROOT, help="BIOIMAGE_CTE_ROOT: the flow runs' working folder")
    parser.add_argument("--check", action="store_true", help="only validate the file")
    parser.add_argument("--run-now", action="store_true", help="also run the first deployment once, now")
    parser.add_argument("--zoo", help="with --run-now: the zoo to rank (default: the file's)")
    parser.add_argument("--target", action="append", help="with --run-now: a target (repeat; default: the file's)")
    parser.add_argument("--output-dir", help="with --run-now: where the run writes (and keeps its results store)")
    parser.add_argument("--temporary-server", action="store_true", help="start a Prefect server for this script "
                        "only (to try it out: the deployment and its schedule go with the server)")
    args = parser.parse_args(argv)
    if args.temporary_server and not args.check:
        with temporary_prefect_server():
            return _deploy_and_run(args)
    return _deploy_and_run(args)


@contextlib.contextmanager
def temporary_prefect_server() -> Iterator[str]:
    """A Prefect server for this process and the prefect commands it runs (``PREFECT_API_URL`` in the environment);
    it stops, with every deployment on it, when the block ends."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bioimage_cte_flows.servers import temporary_server

    with temporary_server() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url
        try:
            yield api_url
        finally:
            del os.environ["PREFECT_API_URL"]


def _deploy_and_run(args: argparse.Namespace) -> Any:
    deployments = check_deployments(args.prefect_file, args.root)
    print(f"{args.prefect_file}: {len(deployments)} deployment(s) valid: "
          + ", ".join(d["name"] for d in deployments))
    if args.check:
        return deployments
    first = deployments[0]
    pool = first["work_pool"]["name"]
    ensure_pool(pool, root=args.root)
    print(deploy(args.prefect_file, root=args.root).strip())
    if not args.run_now:
        return deployments
    parameters: dict[str, Any] = {}
    if args.zoo:
        parameters["zoo"] = str(Path(args.zoo).resolve())
    if args.target:
        parameters["targets"] = [str(Path(t).resolve()) for t in args.target]
    # one process, no local Dask cluster: a quick run to see the pool work
    parameters["run"] = {**(first["parameters"].get("run") or {}), "dask_address": None, "workers": None}
    if args.output_dir:
        out = Path(args.output_dir).resolve()
        parameters["run"].update(output_dir=str(out), store_path=str(out / "results.sqlite"))
    flow_run = run_once(f"zoo-ranking/{first['name']}", pool, parameters, root=args.root)
    print(f"flow run {flow_run.name}: {flow_run.state.name} ({flow_run.state.message})")
    return flow_run


if __name__ == "__main__":
    main()
