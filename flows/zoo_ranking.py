"""Rank every model of a zoo on every target, incrementally: a Prefect flow over the results store.

One task per model scores it on every target it fits, loading it once
(:func:`bioimage_cte.run.jobs.score_jobs`); per model x target pair it checks the results store
(:mod:`bioimage_cte.run.store`) and scores the pair only if the store has no result for this package content, these
images, this estimator and these settings. The flow then ranks the models per target from the store, writes
``<output_dir>/rankings/<target>.json``, optionally writes the rankings back onto the packages
and the zoo reports, and publishes a progress artifact and one table artifact per target.

Run it once, in this process (a temporary Prefect server starts if ``PREFECT_API_URL`` is unset)::

    bioimage-cte zoo-rank resources/zoo resources/data/dsb2018 resources/data/nuclei-tiny-crowded

or from Python with :func:`run_zoo_ranking`. On a schedule (needs a real Prefect server)::

    prefect server start --background
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    bioimage-cte zoo-rank --cron "0 3 * * 1" resources/zoo resources/data/dsb2018

The flow's parameters are the run's :class:`~bioimage_cte.run.options.RankOptions` (as JSON, ``options``) and the
zoo run's own settings; the science is in plain library functions (:mod:`bioimage_cte.run.jobs`).

``flows/prefect.yaml`` declares the same schedule for a work pool. Images and packages are read
by path inside the tasks, so with a Dask cluster every worker must see the same paths, and the
results store must be on a disk local to the workers' machine (SQLite's WAL does not work over
a network file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.fileutils import write_atomic
from bioimage_cte.base.version import __version__
from bioimage_cte.run.jobs import (
    JobOutcome,
    ScoreJob,
    TargetSpec,
    group_jobs,
    plan_zoo,
    rank_target,
    record_failure,
    score_job,
    score_jobs,
)
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.store import ResultStore
from bioimage_cte_flows.operations import (
    FailedJob,
    ZooRunSummary,
    check_dask_address,
    final_message,
    notify_webhook,
    run_name,
    summary_markdown,
)

__all__ = [
    "FailedJob",
    "ZooRunOptions",
    "ZooRunSummary",
    "make_task_runner",
    "run_zoo_ranking",
    "serve_zoo_ranking",
    "zoo_ranking_flow",
]

if __name__ != "__main__":
    import cloudpickle

    # Ship this module's tasks to Dask workers by value: a deployment loads this file under a name
    # workers cannot import ("zoo_ranking"), and remote workers then need only bioimage_cte installed.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Progress lines of a run started from this process (run_zoo_ranking's on_progress); a served run logs them only.
_on_progress: Callable[[str], None] | None = None

_DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")


@dataclass(frozen=True, kw_only=True)
class ZooRunOptions:
    """How a zoo run is carried out, beside the ranking's own :class:`~bioimage_cte.run.options.RankOptions`.

    Attributes
    ----------
    store_path : str, optional
        The results database; default ``~/.cache/bioimage-cte/results.sqlite``.
    output_dir : str
        Rankings go to ``<output_dir>/rankings/<target>.json``, reports to ``<output_dir>/reports``.
    annotate : bool
        Write each target's ranking back onto the packages (in place with ``.bak`` backups, or into
        ``annotate_output``).
    reports : bool
        Write the per-model zoo reports (collection layout) under ``<output_dir>/reports``.
    retries : int
        Retries of a pair whose scoring raised (a broken package is not retried: it fails the same way).
    load_once : bool
        One task per model, loading it once for every target it fits (default); False: one task per model x target
        pair, each loading its model again (as before 0.x; kept to measure the difference).
    match_task : bool
        Per target, score only models tagged with the target's ``task`` from its ``target.yaml``.
    refresh : bool
        Score everything again, ignoring the store.
    dask_address, workers, torch_threads
        Task runner (see :func:`make_task_runner`) and torch threads per task (default: the Dask worker's
        thread count on a Dask worker, so a 1-thread worker uses one core; torch's default otherwise).
    failure_webhook : str, optional
        URL that gets a JSON POST (``text``, ``state``, ``failed``, ...) when a model failed or nothing was
        ranked, e.g. a Slack or Teams incoming webhook.
    """

    store_path: str | None = None
    output_dir: str = "zoo-ranking"
    annotate: bool = False
    annotate_output: str | None = None
    reports: bool = True
    retries: int = 1
    load_once: bool = True
    match_task: bool = False
    refresh: bool = False
    dask_address: str | None = None
    workers: int | None = None
    torch_threads: int | None = None
    failure_webhook: str | None = None

    def for_deployment(self) -> ZooRunOptions:
        """A copy whose paths are absolute: a served deployment runs in another folder."""
        return dataclasses.replace(self, output_dir=_absolute(self.output_dir),
                                   store_path=None if self.store_path is None else _absolute(self.store_path))


def _worth_retrying(task, task_run, state) -> bool:
    # A BioimageCteError is bad input (broken package, unreadable image) or a model that hung past its time
    # limit: the same bytes fail the same way.
    return not isinstance(state.data, BioimageCteError)


def _dask_worker_threads() -> int | None:
    """The thread count of the Dask worker running this task, or None outside a Dask worker."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


@task(name="score-model", cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying, retry_delay_seconds=2,
      task_run_name="score {job.source.name} on {job.target.name}")
def score_model_task(job: ScoreJob, store_path: str, refresh: bool = False,
                     torch_threads: int | None = None) -> JobOutcome:
    """Score one model on one target unless the store has it (the store is the cache, not Prefect).

    A model still running after the options' ``time_limit`` is killed in its child process and stored as failed
    (bioimage_cte.run.isolated); a timeout is not retried.
    """
    threads = torch_threads or _dask_worker_threads()
    if threads:
        import torch

        # as many torch threads as the worker has: a 1-thread worker on a 64-core node must not use 64 cores
        torch.set_num_threads(threads)
    return score_job(job, ResultStore(store_path), refresh=refresh)


@task(name="score-model-on-targets", cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying, retry_delay_seconds=2,
      task_run_name="score {jobs[0].source.name} on {jobs[0].target.name} and the other targets it fits")
def score_group_task(jobs: list[ScoreJob], store_path: str, refresh: bool = False, torch_threads: int | None = None,
                     retries: int = 0) -> list[JobOutcome]:
    """Score one model on every target it fits, loading it once; each pair with its own retries and time limit."""
    threads = torch_threads or _dask_worker_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    return score_jobs(jobs, ResultStore(store_path), refresh=refresh, retries=retries)


@task(name="annotate-packages", cache_policy=NO_CACHE, task_run_name="annotate packages for {target.name}")
def annotate_task(ranking_path: str, target: TargetSpec, output: str | None) -> list[str]:
    """Write one target's ranking back onto the packages' rdf.yaml (see bioimage_cte.outputs.annotate)."""
    from bioimage_cte.outputs.annotate import annotate_from_ranking

    written = annotate_from_ranking(Path(ranking_path), target=target.name, images=[Path(p) for p in target.images],
                                    output=None if output is None else Path(output), backup=True)
    return [str(p) for p in written]


@task(name="zoo-reports", cache_policy=NO_CACHE)
def reports_task(rankings: dict[str, dict[str, Any]], out_dir: str) -> str:
    """Write the per-model zoo reports under ``<out_dir>/reports`` (outputs.zoo_reports.write_zoo_reports)."""
    from bioimage_cte.outputs.zoo_reports import write_zoo_reports

    # it also (re)writes <out_dir>/rankings/<target>.json, the same files the flow wrote
    write_zoo_reports(rankings, Path(out_dir), tool_version=__version__)
    return str(Path(out_dir) / "reports")


@task(name="leaderboard", cache_policy=NO_CACHE)
def leaderboard_task(rankings: dict[str, dict[str, Any]], out_dir: str, images: dict[str, list[str]]) -> str:
    """Write ``<out_dir>/leaderboard.html`` and each target's page (bioimage_cte.outputs.leaderboard)."""
    from bioimage_cte.outputs.leaderboard import write_zoo_pages

    paths = {target: [Path(p) for p in found] for target, found in images.items()}
    return str(write_zoo_pages(rankings, Path(out_dir), images=paths))


def make_task_runner(dask_address: str | None = None, workers: int | None = None) -> TaskRunner:
    """The task runner for the scoring tasks.

    Parameters
    ----------
    dask_address : str, optional
        None: threads in this process. ``"local"``: a temporary Dask LocalCluster of ``workers``
        processes with one thread each. ``"tcp://host:8786"`` (or another Dask scheme): an existing
        cluster, whose workers need bioimage_cte installed and must see the same zoo, image and
        store paths.
    workers : int, optional
        Threads (default 1) or local worker processes (default: the number of CPUs); ignored for an
        existing cluster. More than one thread is unsafe today: bioimageio.spec parses rdf.yaml with
        a shared YAML parser, and two models loading at once in one process corrupt each other's
        parse (seen as "not a valid package"). Torch already uses every core within one prediction,
        so parallel scoring belongs in processes: ``dask_address="local"``.
    """
    if dask_address is None:
        return ThreadPoolTaskRunner(max_workers=workers or 1)
    if dask_address.startswith(_DASK_SCHEMES):
        check_dask_address(dask_address)  # seconds and one line, instead of a minute and a long traceback
    n = workers or os.cpu_count() or 1
    from prefect_dask import DaskTaskRunner

    # a LocalCluster's scheduler runs in this process and logs every connection at INFO: keep runs quiet
    distributed_logger = logging.getLogger("distributed")
    distributed_logger.setLevel(max(distributed_logger.getEffectiveLevel(), logging.WARNING))

    if dask_address == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    if dask_address.startswith(_DASK_SCHEMES):
        return DaskTaskRunner(address=dask_address)
    raise ValueError(f"dask_address={dask_address!r}: pass 'local' for a temporary cluster on this machine or the "
                     "scheduler address of an existing one, e.g. 'tcp://127.0.0.1:8786'")


def _slug(name: str) -> str:
    # artifact keys allow only lowercase letters, digits and dashes
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "target"


def _check_api_for_processes(dask_address: str | None) -> None:
    from prefect.settings import PREFECT_API_URL

    if dask_address is not None and not PREFECT_API_URL.value():
        raise RuntimeError("a Dask task runner needs a Prefect API its workers can reach, but PREFECT_API_URL is "
                           "unset; run 'prefect server start' and set PREFECT_API_URL, or call run_zoo_ranking(), "
                           "which starts a temporary server for the run")


def _say(text: str) -> None:
    """A progress line: in the run's log, and to the caller of run_zoo_ranking (e.g. the CLI) if it listens."""
    get_run_logger().info(text)
    if _on_progress is not None:
        _on_progress(text)


def _score_all(jobs: Sequence[ScoreJob], store: ResultStore, runner: TaskRunner, *, retries: int, refresh: bool,
               torch_threads: int | None, load_once: bool = True) -> list[JobOutcome]:
    total = len(jobs)
    progress = create_progress_artifact(0.0, key="zoo-ranking-progress",
                                        description=f"0 of {total} model x target pairs done")
    if total == 0:  # e.g. match_task left no model for any target: no cluster to start
        update_progress_artifact(progress, 100.0, description="nothing to score")
        return []
    position = {job.key: i for i, job in enumerate(jobs)}
    # one task per model (every target it fits, one load), or one per pair
    groups = group_jobs(jobs) if load_once else [[job] for job in jobs]
    outcomes: list[JobOutcome | None] = [None] * total
    _say(f"scoring {total} model x target pairs of {len(groups)} models" if load_once else
         f"scoring {total} model x target pairs, one task each")
    common = {"store_path": unmapped(str(store.path)), "refresh": unmapped(refresh),
              "torch_threads": unmapped(torch_threads)}
    done = 0
    with runner:
        if load_once:
            futures = runner.map(score_group_task.with_options(retries=retries),
                                 {"jobs": groups, **common, "retries": unmapped(retries)})
        else:
            futures = runner.map(score_model_task.with_options(retries=retries), {"job": list(jobs), **common})
        index = {future: i for i, future in enumerate(futures)}
        for future in as_completed(list(futures)):
            group = groups[index[future]]
            for job, outcome in zip(group, _outcomes(future, group, store), strict=True):
                done += 1
                outcomes[position[job.key]] = outcome
                update_progress_artifact(progress, 100.0 * done / total,
                                         description=f"{done} of {total} model x target pairs done")
                how = "from the store" if not outcome.scored else ("failed" if outcome.status == "failed" else
                                                                   "scored")
                _say(f"{done}/{total} {job.source.name} on {job.target.name}: {how}")
    return [o for o in outcomes if o is not None]


def _outcomes(future, group: list[ScoreJob], store: ResultStore) -> list[JobOutcome]:
    """A task's outcomes, one per pair (a per-pair task returns one); a task that failed after its retries (its
    worker died, say) has every pair without a result recorded as failed."""
    try:
        result = future.result()
    except Exception as e:  # the pairs it stored before it died keep their results
        return [JobOutcome(job.key, "ok", scored=True) if (r := store.get(job.key)) is not None and r.status == "ok"
                else record_failure(job, store, e) for job in group]
    return result if isinstance(result, list) else [result]


def _table(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"rank": m["rank"], "model": m["name"], "score": m["score"], "images": m["n_images"],
             "empty": m["n_empty"], "note": m["note"]} for m in payload["models"]]
    rows += [{"rank": None, "model": f["name"], "score": None, "images": None, "empty": None,
              "note": f"failed: {f['reason']}"} for f in payload["failures"]]
    return rows


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return run_name(str(parameters.get("zoo", "zoo")), [str(t) for t in parameters.get("targets", [])])


@flow(name="zoo-ranking", description="Rank every zoo model on every target with CTE, scoring only what changed.",
      flow_run_name=_flow_run_name)
def zoo_ranking_flow(
    zoo: str,
    targets: list[str],
    options: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> State:
    """Rank every model of ``zoo`` on every target, scoring only the pairs the store does not have.

    The run ends ``Completed`` with a message counting what failed (the :class:`ZooRunSummary` is its result), or
    ``Failed`` when no target got a single ranked model. With ``run["failure_webhook"]`` set, either case with a
    failure is POSTed there.

    Parameters
    ----------
    zoo : str
        A folder of model packages, or a collection index JSON (path or URL).
    targets : list of str
        Target folders, each with ``images/`` (``labels/`` optional: true metrics are then stored too).
    options : dict, optional
        :meth:`bioimage_cte.run.options.RankOptions.to_json_dict` of the run (estimator, strength, seed, tag, trust,
        ...); default: ``RankOptions()``. JSON, so that a deployment can store it.
    run : dict, optional
        The fields of :class:`ZooRunOptions` (store, output folder, write-back, retries, task runner); default:
        ``ZooRunOptions()``.
    """
    logger = get_run_logger()
    how = ZooRunOptions(**(run or {}))
    _check_api_for_processes(how.dask_address)
    run_options = RankOptions.from_json_dict(options or {})
    _say(f"finding models in {zoo} and reading {len(targets)} targets")
    specs, jobs, unfit = plan_zoo(zoo, targets, run_options, match_task=how.match_task)
    if unfit:
        _say(f"{len(unfit)} model x target pairs do not fit (3D/2D, channels or task); their reasons go into the "
             "rankings under not_fitting")
    store = ResultStore(how.store_path)  # created here, before workers race to create it
    runner = make_task_runner(how.dask_address, how.workers)
    outcomes = _score_all(jobs, store, runner, retries=how.retries, refresh=how.refresh,
                          torch_threads=how.torch_threads, load_once=how.load_once)

    out = Path(how.output_dir).expanduser().resolve()
    rankings: dict[str, str] = {}
    payloads: dict[str, dict[str, Any]] = {}
    annotated: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    for spec in specs:
        _say(f"ranking {spec.name}")
        payload = rank_target(spec, jobs, store, run_options, unfit=unfit)
        path = out / "rankings" / f"{spec.name}.json"
        _write_json(path, payload)
        rankings[spec.name], payloads[spec.name] = str(path), payload
        create_table_artifact(_table(payload), key=f"zoo-ranking-{_slug(spec.name)}",
                              description=f"{run_options.estimator} ranking of {len(payload['models'])} models on "
                                          f"{spec.name} ({len(spec.images)} images); {path}")
        if how.annotate:
            try:
                annotated[spec.name] = annotate_task(str(path), spec, how.annotate_output)
            except BioimageCteError as e:  # write-back is a view on the ranking: report it, keep the ranking
                annotated[spec.name] = [str(p) for p in getattr(e, "written", [])]
                problems[spec.name] = str(e)
                logger.warning("write-back for %s: %s", spec.name, e)
    report_dir = None
    if how.reports:
        _say("writing the zoo reports")
        try:
            report_dir = reports_task(payloads, str(out))
        except BioimageCteError as e:
            problems["reports"] = str(e)
            logger.warning("zoo reports: %s", e)

    leaderboard = None
    if payloads:
        _say("writing the leaderboard")
        try:
            leaderboard = leaderboard_task(payloads, str(out), {s.name: list(s.images) for s in specs})
        except Exception as e:  # a view on the rankings, like the reports: it never fails the run
            problems["leaderboard"] = str(e)
            logger.warning("leaderboard: %s", e)

    failed = tuple(FailedJob(j.source.name, j.source.source, j.target.name, o.error or "failed", o.stage or "predict")
                   for j, o in zip(jobs, outcomes, strict=True) if o.status == "failed")
    scored, cached = sum(o.scored and o.status == "ok" for o in outcomes), sum(not o.scored for o in outcomes)
    ranked = {name: len(payload["models"]) for name, payload in payloads.items()}
    message = final_message(scored=scored, cached=cached, failed=len(failed), ranked=ranked, unfit=len(unfit))
    summary = ZooRunSummary(rankings, scored=scored, cached=cached, failed=failed, unfit=tuple(unfit),
                            annotated=annotated,
                            problems=problems, reports=report_dir, leaderboard=leaderboard, store=str(store.path),
                            model_loads=sum(o.loads for o in outcomes),
                            message=message,
                            ranked=any(ranked.values()))
    create_markdown_artifact(summary_markdown(summary), key="zoo-ranking-summary",
                             description="What the last zoo ranking run scored, reused and could not score")
    for f in failed:
        logger.warning("failed: %s on %s: %s", f.model, f.target, f.reason)
    if how.failure_webhook and (failed or not summary.ranked):
        problem = notify_webhook(how.failure_webhook, _webhook_payload(summary))
        if problem:
            logger.warning("%s", problem)
    _say(message)
    if not summary.ranked:
        return Failed(message=f"nothing ranked: {message}", data=summary)
    return Completed(message=message, data=summary)


def _webhook_payload(summary: ZooRunSummary) -> dict[str, Any]:
    from prefect.runtime import flow_run

    state = "Completed" if summary.ranked else "Failed"
    return {"text": f"zoo-ranking run {flow_run.name or ''} {state}: {summary.message}", "state": state,
            "flow_run": flow_run.name, "flow_run_id": flow_run.id, "message": summary.message,
            "failed": [dataclasses.asdict(f) for f in summary.failed], "rankings": summary.rankings}


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """A Prefect API for the run: the configured one, else a temporary server that dies with this process.

    Started here rather than by Prefect, so that a run killed with SIGKILL leaves no server behind
    (:mod:`bioimage_cte_flows.servers`), and so that Dask worker processes, which cannot start their own, share it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from bioimage_cte_flows.servers import temporary_server

    with temporary_server() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def run_zoo_ranking(
    zoo: str | Path,
    targets: Sequence[str | Path],
    options: RankOptions | None = None,
    run: ZooRunOptions | None = None,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> ZooRunSummary:
    """Run :func:`zoo_ranking_flow` once from plain Python (e.g. the CLI).

    The zoo and every target are checked before Prefect starts (:func:`bioimage_cte.run.jobs.check_zoo_inputs`): a
    target that cannot be used is listed under ``problems`` with its reason and the others are ranked; a zoo
    without models, or no usable target, raises before anything starts. Without ``PREFECT_API_URL`` a temporary
    Prefect server runs for the run and stops with it, even when the run is killed. ``on_progress`` gets one line
    per stage and per finished model x target pair. The summary is returned whether the run ended Completed or
    Failed (``summary.ranked`` is False then).
    """
    global _on_progress
    from bioimage_cte.run.jobs import check_zoo_inputs

    run = run or ZooRunOptions()
    options = options or RankOptions()
    usable, problems = check_zoo_inputs(str(zoo), [str(t) for t in targets], options)
    if run.dask_address and run.dask_address != "local":
        check_dask_address(run.dask_address)  # before a temporary server is started for nothing
    previous, _on_progress = _on_progress, on_progress
    if on_progress is not None:
        on_progress("inputs checked; starting the flow (without PREFECT_API_URL a temporary Prefect server starts: "
                    "10-30 s)")
    try:
        with _prefect_api():
            state = zoo_ranking_flow(_absolute(zoo), [_absolute(t) for t in usable], options.to_json_dict(),
                                     dataclasses.asdict(run), return_state=True)
    finally:
        _on_progress = previous
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # the flow raised before it could summarise (e.g. no model found)
        raise result
    return dataclasses.replace(result, problems={**problems, **result.problems})


def _absolute(path: str | Path) -> str:
    # a served deployment runs in another folder: paths are made absolute when it is registered
    text = str(path)
    return text if text.startswith(("http://", "https://")) else str(Path(text).expanduser().resolve())


def serve_zoo_ranking(
    zoo: str | Path,
    targets: Sequence[str | Path],
    options: RankOptions | None = None,
    run: ZooRunOptions | None = None,
    *,
    cron: str,
    timezone: str | None = None,
    name: str = "weekly",
    global_limit: int | None = 1,
) -> None:
    """Serve the flow on a cron schedule from this process (needs a Prefect server: ``PREFECT_API_URL``).

    ``global_limit`` runs of the deployment at most run at once, counted by the server (so also across several
    serving processes or workers); None: no server-side limit.

    Raises
    ------
    RuntimeError
        ``PREFECT_API_URL`` is unset (a schedule needs a server that outlives this process).
    """
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("serving on a schedule needs a Prefect server: run 'prefect server start' and 'prefect "
                           "config set PREFECT_API_URL=http://127.0.0.1:4200/api', then serve again")
    parameters = {"zoo": _absolute(zoo), "targets": [_absolute(t) for t in targets],
                  "options": (options or RankOptions()).to_json_dict(),
                  "run": dataclasses.asdict((run or ZooRunOptions()).for_deployment())}
    # limit=1: a slow run and the next scheduled one never score the same zoo at once
    zoo_ranking_flow.serve(name=name, parameters=parameters, limit=1, global_limit=global_limit, tags=["bioimage-cte"],
                           schedule=Cron(cron, timezone=timezone) if timezone else Cron(cron))
