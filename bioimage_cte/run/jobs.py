"""Planning and running a zoo-wide ranking as small jobs over the results database.

:func:`read_target` and :func:`plan_jobs` turn folders into small, picklable :class:`ScoreJob` values (paths,
never arrays), :func:`score_job` scores one job unless the results database already has it, and
:func:`rank_target` ranks one target from the database. Used by the Prefect flow (``flows/``); plain functions,
tested without Prefect.

Ranking a target is a second stage, after every model ran on it: the records keep each model's clean masks, so
what compares the candidates with each other (the default ``tta+consensus``'s consensus half, each model's
predicted Dice) is computed there as ``rank`` computes it in one process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError, ModelTimeoutError, one_line
from bioimage_cte.base.version import __version__
from bioimage_cte.cte.outcomes import FailureKind, ModelFailure, ModelResult, Stage, failure_of
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.store import (
    ResultStore,
    ScoreRecord,
    decode_masks,
    encode_masks,
    now,
    package_fingerprint,
    result_key,
)
from bioimage_cte.zoo.sources import ModelSource, select_models

__all__ = [
    "JobOutcome",
    "ScoreJob",
    "TargetSpec",
    "UnfitPair",
    "check_zoo_inputs",
    "collect_results",
    "failed_record",
    "group_jobs",
    "plan_jobs",
    "plan_pairs",
    "plan_zoo",
    "rank_target",
    "read_target",
    "record_failure",
    "score_job",
    "score_jobs",
]


@dataclass(frozen=True)
class TargetSpec:
    """One target dataset as a run needs it: paths and fingerprints, no pixels.

    Attributes
    ----------
    name : str
        The target's folder name.
    folder : str
        The target folder.
    images : tuple of str
        The image files, sorted.
    labels : str or None
        The ``labels/`` folder when there is one (true metrics are then recorded too).
    fingerprint : str
        :func:`bioimage_cte.predict.images.dataset_fingerprint` of the images.
    labels_fingerprint : str or None
        sha256 over the label files' names and bytes.
    task : str or None
        ``task`` from the target's ``target.yaml``.
    """

    name: str
    folder: str
    images: tuple[str, ...]
    labels: str | None
    fingerprint: str
    labels_fingerprint: str | None
    task: str | None


def read_target(folder: str | Path) -> TargetSpec:
    """Describe a target folder: its ``images/`` (or the folder's own images), optional ``labels/`` and task.

    Raises
    ------
    InvalidImageError
        The folder does not exist, holds no images, or has labels for some images only.
    """
    from bioimage_cte.predict.images import dataset_fingerprint, list_images, target_task

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidImageError(f"target {folder} is not a folder; pass folders laid out as <target>/images/*.tif "
                                "(labels/ optional)")
    images = list_images(folder / "images" if (folder / "images").is_dir() else folder)
    labels_dir = folder / "labels"
    labels: list[Path] = []
    if labels_dir.is_dir():
        with contextlib.suppress(InvalidImageError):  # an empty labels/ folder is no labels
            labels = list_images(labels_dir)
    missing = sorted({p.stem for p in images} - {p.stem for p in labels}) if labels else []
    if missing:  # checked here, once, rather than failing every model on the same image
        raise InvalidImageError(f"target {folder}: no label in {labels_dir} for image {missing[0]} (and "
                                f"{len(missing) - 1} more); add the labels or remove the labels/ folder")
    return TargetSpec(
        name=folder.name,
        folder=str(folder),
        images=tuple(str(p) for p in images),
        labels=str(labels_dir) if labels else None,
        fingerprint=dataset_fingerprint(images),
        labels_fingerprint=dataset_fingerprint(labels) if labels else None,
        task=target_task(folder),
    )


# --- jobs --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreJob:
    """One model on one target: everything a worker needs, as paths and small values (picklable)."""

    key: str
    source: ModelSource
    model: str
    sha256: str | None
    target: TargetSpec
    options: RankOptions
    settings: dict[str, Any]


@dataclass(frozen=True)
class JobOutcome:
    """What :func:`score_job` did: ``scored`` is False when the store already had the result."""

    key: str
    status: Literal["ok", "failed"]
    scored: bool
    error: str | None = None
    stage: str | None = None
    #: how many times scoring this pair loaded its model (0: the model was already loaded for another target)
    loads: int = 0


def _settings(options: RankOptions, target: TargetSpec) -> dict[str, Any]:
    if options.strength == "auto":
        raise BioimageCteError("strength 'auto' is chosen from every candidate's predictions at once and cannot be "
                               "stored per model; give a number, or rank with 'bioimage-cte rank'")
    estimator = options.make_estimator()
    if estimator.cross_model:
        raise BioimageCteError(f"estimator {options.estimator!r} compares every model's masks at once and cannot be "
                               "stored per model; use 'bioimage-cte evaluate' for it, or another estimator")
    if estimator.needs_labels and target.labels is None:
        raise InvalidImageError(f"estimator {options.estimator!r} needs labels but target {target.folder} has no "
                                "labels/ folder; add labels or choose a label-free estimator")
    return {**options.score_settings(), "labels": target.labels_fingerprint}


@dataclass(frozen=True)
class UnfitPair:
    """A model left out of a target's ranking before scoring, because it cannot run there (see :mod:`.fit`)."""

    model: str
    source: str
    target: str
    reason: str


def plan_jobs(
    sources: Sequence[ModelSource],
    targets: Sequence[TargetSpec],
    options: RankOptions,
    *,
    match_task: bool = False,
) -> list[ScoreJob]:
    """One job per model and target that fit each other (see :func:`plan_pairs`, which also says why others do not)."""
    return plan_pairs(sources, targets, options, match_task=match_task)[0]


def plan_pairs(
    sources: Sequence[ModelSource],
    targets: Sequence[TargetSpec],
    options: RankOptions,
    *,
    match_task: bool = False,
) -> tuple[list[ScoreJob], list[UnfitPair]]:
    """One job per model and target (targets outer, models in the given order), each with its store key.

    Every package is fingerprinted once (it is read in full; no model is loaded). A pair that cannot work
    (:mod:`bioimage_cte.predict.fit`: a 3D model on 2D images, a channel count the images cannot give, another task with
    ``match_task``) gets no job but an :class:`UnfitPair` with its reason, checked on the target's first image.

    Parameters
    ----------
    sources : sequence of ModelSource
        The models, e.g. from :func:`bioimage_cte.zoo.sources.find_models`.
    targets : sequence of TargetSpec
        From :func:`read_target`.
    options : RankOptions
        Estimator and run options.
    match_task : bool
        Score on a target only the models whose RDF tags contain the target's ``task``
        (targets without a task get every model). Models without tags, or whose RDF cannot be
        read, are kept: a broken package is then reported as failed instead of silently left out.

    Returns
    -------
    jobs : list of ScoreJob
        The pairs to score.
    unfit : list of UnfitPair
        The pairs left out, each with its one-line reason.

    Raises
    ------
    BioimageCteError
        The estimator cannot be stored per model (``consensus``) or needs labels a target lacks.
    """
    from bioimage_cte.predict.fit import ImageFit, input_layout, task_reason
    from bioimage_cte.zoo.sources import file_sha256, read_rdf

    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise BioimageCteError(f"two targets share a folder name ({', '.join(names)}); rankings are written per "
                               "target name, so rename one folder")
    identity = {s.location: (package_fingerprint(s.location), file_sha256(s.location)) for s in sources}
    rdfs = {s.location: read_rdf(s) or {} for s in sources}
    layouts = {loc: input_layout(rdf) for loc, rdf in rdfs.items()}
    jobs: list[ScoreJob] = []
    unfit: list[UnfitPair] = []
    for target in targets:
        settings = _settings(options, target)
        task = (target.task or "").lower()
        fit = ImageFit(Path(target.images[0]), axes=options.axes, channels=options.channels,
                       max_pixels=options.max_pixels, inputs=options.inputs) if target.images else None
        for source in sources:
            tags = rdfs[source.location].get("tags", [])
            reason = task_reason([str(t) for t in tags] if isinstance(tags, list) else [], task) if match_task \
                else None
            layout = layouts[source.location]
            if reason is None and layout is not None and fit is not None:
                reason = fit.reason(layout, model=source.location)
            if reason is not None:
                unfit.append(UnfitPair(source.name, source.source, target.name, reason))
                continue
            model, sha256 = identity[source.location]
            key = result_key(model, target.fingerprint, options.estimator, settings)
            jobs.append(ScoreJob(key, source, model, sha256, target, options, settings))
    return jobs, unfit


def failed_record(job: ScoreJob, error: BaseException | str) -> ScoreRecord:
    """The record of a job that could not be scored, with the error as one line."""
    stage, kind = Stage.PREDICT, FailureKind.ERROR
    if isinstance(error, BaseException):  # classified and worded as rank's failures are
        failure = failure_of(job.source, error)
        stage, error, kind = failure.stage, failure.reason, failure.kind
    return ScoreRecord(job.model, job.target.fingerprint, job.options.estimator, job.settings, __version__, "failed",
                       name=job.source.name, source=job.source.source, sha256=job.sha256,
                       images=tuple(Path(p).name for p in job.target.images), error=error, stage=stage,
                       created=now(), kind=str(kind))


def score_job(job: ScoreJob, store: ResultStore, *, refresh: bool = False) -> JobOutcome:
    """Score one model on one target, unless the store already has it; write the result to the store.

    Idempotent: running a job twice scores it once. A model that cannot be scored is stored
    as ``"failed"`` with its reason, and the error is raised again so that the caller may retry
    it; a failed record is never a cache hit (a failure may be transient). With ``options.time_limit`` the model
    runs in a child process killed at the limit (:mod:`bioimage_cte.run.isolated`): stored as failed, "timed out".

    Parameters
    ----------
    job : ScoreJob
        From :func:`plan_jobs`.
    store : ResultStore
        Where results are looked up and written.
    refresh : bool
        Score even if the store has the result.

    Returns
    -------
    JobOutcome
        ``scored=False`` for a cache hit.
    """
    if not refresh and _cached(job, store.get(job.key)):
        return JobOutcome(job.key, "ok", scored=False)
    from bioimage_cte.predict.images import load_labels
    from bioimage_cte.run.isolated import run_isolated
    from bioimage_cte.run.scoring import score_model

    options = job.options
    paths = [Path(p) for p in job.target.images]
    try:
        labels = load_labels(paths, job.target.labels, axes=options.axes) if job.target.labels else None
        result = run_isolated(score_model, job.source, paths, [options.make_estimator()], options, labels=labels,
                              seconds=options.time_limit, what=f"{job.source.name} on {job.target.name}",
                              location=job.source.location)
    except Exception as e:  # stored as failed, then raised again for the caller's retries
        store.put(job.key, failed_record(job, e))
        raise
    store.put(job.key, _ok_record(job, result))
    return JobOutcome(job.key, "ok", scored=True, loads=1)


def _wants_masks(options: RankOptions) -> bool:
    """Whether ranking a target compares the models' clean masks (the run then keeps them, see scoring)."""
    from bioimage_cte.cte.registry import ESTIMATORS

    # the estimator's class says it: no estimator is built for a cache lookup
    return options.predict_dice or getattr(ESTIMATORS.get(options.estimator), "keeps_masks", False)


def _cached(job: ScoreJob, record: ScoreRecord | None) -> bool:
    """Whether the store's record of ``job`` is a result to keep: ok, and with the masks the ranking needs (a
    record of an earlier version kept none)."""
    return record is not None and record.status == "ok" and (record.masks is not None
                                                              or not _wants_masks(job.options))


def _ok_record(job: ScoreJob, result: ModelResult) -> ScoreRecord:
    return ScoreRecord(job.model, job.target.fingerprint, job.options.estimator, job.settings, __version__, "ok",
                       name=job.source.name, source=job.source.source, sha256=result.sha256,
                       images=tuple(Path(p).name for p in job.target.images), per_image=result.per_image,
                       true=result.true, failures=result.failures, layer=result.layer, seconds=result.seconds,
                       created=now(), foreground=result.foreground, weights=result.weights,
                       rdf_format=result.rdf_format, masks=encode_masks(result.masks),
                       volumetric=result.volumetric)


def group_jobs(jobs: Sequence[ScoreJob]) -> list[list[ScoreJob]]:
    """The jobs by model (package location), in the order each model first appears: one group per model, holding
    every target it fits, for :func:`score_jobs`."""
    groups: dict[str, list[ScoreJob]] = {}
    for job in jobs:
        groups.setdefault(job.source.location, []).append(job)
    return list(groups.values())


def score_jobs(jobs: Sequence[ScoreJob], store: ResultStore, *, refresh: bool = False, retries: int = 0,
               retry_delay: float = 2.0,
               on_outcome: Callable[[ScoreJob, JobOutcome], None] | None = None) -> list[JobOutcome]:
    """Score the jobs of one model (every target it fits, see :func:`group_jobs`), loading the model once.

    Per pair it does what :func:`score_job` does: a pair the store has is not scored again, each result or failure
    is stored under the pair's key, and a pair gets ``options.time_limit`` (model loading included when it is the
    one that loads). The pairs run one after another in one kept child process
    (:class:`~bioimage_cte.run.isolated.IsolatedWorker`), which keeps the model loaded between targets
    (:func:`~bioimage_cte.run.scoring.score_model_kept`); a pair that hangs is killed at its limit, stored as timed
    out, and the next pair starts a new child. A pair that raised anything but a
    :class:`~bioimage_cte.base.errors.BioimageCteError` (bad input, a broken package or a timeout fail the same way
    again) is tried up to ``retries`` more times, ``retry_delay`` seconds apart, as the zoo flow's tasks were
    retried one pair at a time.

    Returns
    -------
    list of JobOutcome
        One per job, in order; a failed pair is ``"failed"`` with its stored reason (nothing is raised for it).
        ``loads`` counts the model loads of each pair.
    """
    from bioimage_cte.run.isolated import IsolatedWorker
    from bioimage_cte.run.scoring import release_kept

    if len({job.source.location for job in jobs}) > 1:
        raise ValueError("score_jobs scores the jobs of one model; group them with group_jobs")
    outcomes: list[JobOutcome] = []
    try:
        with IsolatedWorker(seconds=jobs[0].options.time_limit if jobs else 0) as worker:
            for job in jobs:
                if not refresh and _cached(job, store.get(job.key)):
                    outcome = JobOutcome(job.key, "ok", scored=False)
                else:
                    outcome = _score_pair(job, store, worker, retries=retries, retry_delay=retry_delay)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(job, outcome)
    finally:  # without a child the model was kept in this process: it goes with its group
        release_kept(jobs[0].source.location if jobs else None)
    return outcomes


def _score_pair(job: ScoreJob, store: ResultStore, worker: Any, *, retries: int, retry_delay: float) -> JobOutcome:
    """One pair of :func:`score_jobs` in its worker, with its retries; its result or failure stored."""
    from bioimage_cte.predict.images import load_labels
    from bioimage_cte.run.scoring import release_kept, score_model_kept

    options, paths, loads = job.options, [Path(p) for p in job.target.images], 0
    for attempt in range(retries + 1):
        fresh = worker.fresh
        try:
            labels = load_labels(paths, job.target.labels, axes=options.axes) if job.target.labels else None
            kept = worker.run(score_model_kept, job.source, paths, [options.make_estimator()], options,
                              labels=labels, what=f"{job.source.name} on {job.target.name}",
                              location=job.source.location)
        except Exception as e:
            loads += fresh  # a new process loads the model first: counted whether or not it got further
            if isinstance(e, ModelTimeoutError):  # in-process, a thread may still be running it: never reuse it
                release_kept(job.source.location)
            store.put(job.key, failed_record(job, e))
            if isinstance(e, BioimageCteError) or attempt == retries:
                record = store.get(job.key)
                return JobOutcome(job.key, "failed", scored=True, error=record.error if record else str(e),
                                  stage=record.stage if record else None, loads=loads)
            time.sleep(retry_delay)
            continue
        store.put(job.key, _ok_record(job, kept.result))
        return JobOutcome(job.key, "ok", scored=True, loads=loads + kept.loaded)
    raise AssertionError("unreachable: the last attempt returns")


def collect_results(jobs: Sequence[ScoreJob], store: ResultStore) -> tuple[list[ModelResult], list[ModelFailure]]:
    """Rebuild the results of one target's jobs from the store, for :func:`bioimage_cte.run.ranking.build_ranking`.

    Returns
    -------
    results : list of ModelResult
        One per job stored as ``"ok"``, in job order, carrying the package's current sha256.
    failures : list of ModelFailure
        One per job stored as ``"failed"`` (with its reason) or missing from the store.
    """
    results: list[ModelResult] = []
    failures: list[ModelFailure] = []
    for job in jobs:
        record = store.get(job.key)
        if record is None:
            failures.append(ModelFailure(job.source.name, job.source.source, Stage.PREDICT,
                                         "not scored: the run stopped before this model finished; run it again",
                                         FailureKind.NOT_SCORED))
        elif record.status == "failed":
            failures.append(ModelFailure(job.source.name, job.source.source, Stage(record.stage or Stage.PREDICT),
                                         record.error or "failed", FailureKind(record.kind or FailureKind.ERROR)))
        else:
            # the current sha256, not the stored one: a package annotated since has the same scores and a new file
            results.append(ModelResult(job.source, record.per_image, record.true, decode_masks(record.masks),
                                       record.failures, record.layer, record.seconds, job.sha256, record.foreground,
                                       weights=record.weights, rdf_format=record.rdf_format,
                                       volumetric=record.volumetric))
    return results, failures


def rank_target(
    target: TargetSpec, jobs: Sequence[ScoreJob], store: ResultStore, options: RankOptions, *,
    unfit: Sequence[UnfitPair] = (),
) -> dict[str, Any]:
    """Rank the models of ``jobs`` scored on ``target`` from the store, as a ranking JSON.

    Returns
    -------
    dict
        :func:`bioimage_cte.run.ranking.ranking_json` (as ``bioimage-cte rank --output`` writes it, so
        :func:`bioimage_cte.outputs.annotate.annotate_from_ranking` reads it) with a ``target`` section (name, folder,
        task, fingerprint). Models without a result are listed under ``failures``, the pairs of ``unfit`` on this
        target under ``not_fitting`` (model, source, reason), and ``warnings`` (a ranking of z-stacks that mixes 3D
        and slice-wise 2D models, :func:`bioimage_cte.predict.fit.mixed_dimensions_warning`).
    """
    from bioimage_cte.predict.fit import mixed_dimensions_warning
    from bioimage_cte.run.calibrated import run_predictions
    from bioimage_cte.run.ranking import build_ranking, ranking_json

    mine = [j for j in jobs if j.target.name == target.name]
    results, failures = collect_results(mine, store)
    ranking = build_ranking(results, options.make_estimator(), failures=failures, seed=options.seed,
                            predicted=run_predictions(results, options, tag=options.tag or target.task))
    images = Path(target.images[0]).parent if target.images else Path(target.folder)
    payload = ranking_json(ranking, options, images=str(images), n_images=len(target.images))
    payload["target"] = {"name": target.name, "folder": target.folder, "task": target.task,
                         "fingerprint": target.fingerprint, "labels_fingerprint": target.labels_fingerprint}
    payload["not_fitting"] = [{"model": u.model, "source": u.source, "reason": u.reason}
                              for u in unfit if u.target == target.name]
    mixed = mixed_dimensions_warning([j.source for j in mine], Path(target.images[0]), axes=options.axes,
                                     max_pixels=options.max_pixels) if target.images else None
    payload["warnings"] = [mixed] if mixed else []
    return payload


def plan_zoo(zoo: str, targets: Sequence[str], options: RankOptions, *,
             match_task: bool = False) -> tuple[list[TargetSpec], list[ScoreJob], list[UnfitPair]]:
    """Everything a zoo run checks before it scores: the models (with the tag), every target, one job per pair.

    Returns
    -------
    targets, jobs, unfit
        The targets read, the pairs to score and the pairs that do not fit (:func:`plan_pairs`).

    Raises
    ------
    BioimageCteError
        No model (with the tag) in ``zoo``, a target that is not a folder of images, or an estimator that cannot
        be stored per model; raised before anything is scored.
    """
    zoo_spec = zoo if zoo.startswith(("http://", "https://")) else str(Path(zoo).expanduser().resolve())
    sources = select_models([zoo_spec], tag=options.tag)
    specs = [read_target(t) for t in targets]
    return (specs, *plan_pairs(sources, specs, options, match_task=match_task))


def check_zoo_inputs(zoo: str, targets: Sequence[str], options: RankOptions) -> tuple[list[str], dict[str, str]]:
    """Check a zoo run's inputs before anything starts: the zoo once, then every target on its own.

    A target is usable when it is a folder of images that can all be read (headers and pixels, within
    ``options.max_pixels``): every model of the zoo would fail on an unreadable image, so the target is left out.

    Returns
    -------
    usable : list of str
        The usable targets, in the given order.
    problems : dict
        Each unusable target -> its one-line reason.

    Raises
    ------
    BioimageCteError
        The zoo has no model (with the tag), or no target is usable (every reason on its own line).
    """
    from bioimage_cte.predict.images import check_images

    zoo_spec = zoo if zoo.startswith(("http://", "https://")) else str(Path(zoo).expanduser().resolve())
    select_models([zoo_spec], tag=options.tag)
    usable: list[str] = []
    problems: dict[str, str] = {}
    for target in targets:
        try:
            spec = read_target(target)
            check_images([Path(p) for p in spec.images], axes=options.axes, max_pixels=options.max_pixels)
        except BioimageCteError as e:
            problems[str(target)] = one_line(e)
        else:
            usable.append(target)
    if not usable:
        lines = "\n".join(f"  {target}: {reason}" for target, reason in problems.items())
        raise InvalidImageError(f"none of the {len(targets)} targets can be used; fix them or pass other folders:\n"
                                f"{lines}")
    return usable, problems


def record_failure(job: ScoreJob, store: ResultStore, error: BaseException) -> JobOutcome:
    """Record a job whose task failed after its retries (a worker that died never stored its own failure)."""
    record = store.get(job.key)
    if record is None or record.status != "failed":
        record = failed_record(job, error)
        store.put(job.key, record)
    return JobOutcome(job.key, "failed", scored=True, error=record.error, stage=record.stage)
