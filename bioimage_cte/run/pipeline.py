"""The library's entry points: from what a user names to a ranking, in one call.

:func:`rank` finds the models, keeps those with the tag, checks every image before any model runs, scores every
model and ranks them; :func:`evaluate` does the same for several estimators on labelled images and compares each
ranking with the ranking by true performance. The command line and the benchmarks call these and only parse and
print; the zoo flow runs the same steps as jobs over the results database (:mod:`bioimage_cte.run.jobs`).

Examples
--------
>>> from bioimage_cte.run.options import RankOptions
>>> run = rank(["resources/zoo"], "resources/data/dsb2018/images",
...            RankOptions(tag="nuclei"))  # doctest: +SKIP
>>> run.ranking.scores[0].name  # doctest: +SKIP
'nuclei-versatile'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError, InvalidModelError
from bioimage_cte.cte.estimators import Estimator, FewLabelOracle
from bioimage_cte.cte.metrics import METRICS
from bioimage_cte.cte.outcomes import FailureKind, ModelFailure, ModelResult, Stage, failure_of
from bioimage_cte.cte.registry import LABEL_FREE
from bioimage_cte.predict.fit import ImageFit, input_layout, mixed_dimensions_warning
from bioimage_cte.predict.images import ImageCache, check_images, list_images, load_labels
from bioimage_cte.run.budget import rank_adaptive
from bioimage_cte.run.calibrated import run_predictions
from bioimage_cte.run.evaluation import Evaluation, evaluate_rankings
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.overlays import options_from_settings, report_overlays
from bioimage_cte.run.ranking import Ranking, build_ranking, ranking_json
from bioimage_cte.run.scoring import rank_models
from bioimage_cte.run.setup_checks import check_device, layer_missing_everywhere
from bioimage_cte.run.strength import with_automatic_strength
from bioimage_cte.zoo.rdf_checks import precheck_package
from bioimage_cte.zoo.sources import (
    ModelSource,
    filter_by_tag,
    locate_models,
    missing_sources,
    missing_tag_error,
    mixed_tasks_warning,
    read_rdf,
)

__all__ = ["EvaluationRun", "Progress", "RankingRun", "evaluate", "options_from_settings", "rank",
           "report_overlays"]


@dataclass
class Progress:
    """Callbacks a caller may give to follow a long run (all optional)."""

    #: a warning about the input (e.g. a constant image), before any model runs
    warning: Callable[[str], None] | None = None
    #: the run is about to score this many models x images
    start: Callable[[int], None] | None = None
    #: the run will score this many models on this many images (called just before ``start``)
    plan: Callable[[int, int], None] | None = None
    #: a stage before scoring starts, e.g. "finding models", "checking 10 images"
    stage: Callable[[str], None] | None = None
    #: a model starts
    model: Callable[[ModelSource], None] | None = None
    #: one image of one model is done
    image: Callable[[], None] | None = None
    #: with a budget: image ``i`` of at most ``n`` starts, scored by every model in turn (models stay loaded)
    round: Callable[[int, int], None] | None = None
    #: a study over several targets: target ``j`` of ``m`` (its name) starts; models are counted per target
    target: Callable[[str, int, int], None] | None = None


@dataclass(frozen=True, kw_only=True)
class _Run:
    """What a run was made from: the models found, the images, the options and the warnings about the images."""

    sources: tuple[ModelSource, ...]
    images: tuple[Path, ...]
    options: RankOptions
    warnings: tuple[str, ...] = ()
    #: unreadable images left out with ``skip_bad_images``, each with its one-line reason
    skipped_images: tuple[tuple[Path, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class RankingRun(_Run):
    """A ranking and what it was made from."""

    ranking: Ranking
    #: why scoring stopped: "all images", or with a budget "settled" / "budget"
    stop_reason: str = "all images"
    #: images found (``images`` are those scored, in the order scored)
    n_images_found: int | None = None
    #: with ``strength="auto"``: per family, the strength chosen and what the choice looked at
    strength_choice: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json_dict(self, *, images: str | None = None) -> dict[str, Any]:
        """The ranking JSON (``rank --output``): models, failures, skipped images, warnings and every setting."""
        payload = ranking_json(self.ranking, self.options, images=images or _common_folder(self.images),
                               n_images=len(self.images))
        payload["settings"].update({"stop_reason": self.stop_reason, "images_used": len(self.images),
                                    "images_found": self.n_images_found or len(self.images)})
        if self.options.budget != "all":
            payload["settings"]["image_order"] = [p.name for p in self.images]
        payload["settings"].update(self.strength_choice)
        payload["skipped_images"] = [{"path": str(p), "reason": reason} for p, reason in self.skipped_images]
        payload["warnings"] = list(self.warnings)
        return payload


@dataclass(frozen=True, kw_only=True)
class EvaluationRun(_Run):
    """Every estimator's ranking next to the true ranking, what it was made from, and the models that failed."""

    evaluation: Evaluation
    failures: tuple[ModelFailure, ...] = ()


def _common_folder(paths: Sequence[Path]) -> str:
    parents = {str(Path(p).parent) for p in paths}
    return parents.pop() if len(parents) == 1 else ", ".join(sorted(parents))


@dataclass(frozen=True)
class _Inputs:
    sources: list[ModelSource]  # the packages that passed the cheap checks
    failures: list[ModelFailure]  # the packages that did not, and sources that name no package
    paths: list[Path]
    warnings: list[str]
    skipped: tuple[tuple[Path, str], ...]
    images: ImageCache  # the images decoded by the check, kept for the models


def _inputs(models: Sequence[str | Path], images: str | Path | Sequence[Path], options: RankOptions,
            progress: Progress) -> _Inputs:
    """Everything checked before the first model loads, cheapest first and without torch (unless a device is named).

    The device and the images are the run's: a problem there raises once. A package problem (missing path, unsafe
    zip, YAML bomb, no model RDF) is that package's failure; the other packages go on.
    """
    check_device(options.device)
    missing = missing_sources(models)
    if missing is not None:  # a mistyped path is the run's error, told before anything runs, as for images
        raise missing
    if progress.stage is not None:
        progress.stage("finding models")
    sources, problems = locate_models(models)
    failures = [ModelFailure(p.name, p.source, Stage.PREDICT, p.reason, FailureKind.INVALID_PACKAGE) for p in problems]
    where = " ".join(str(m) for m in models)
    if not sources and not failures:
        raise InvalidModelError(f"no model found in {where}; pass rdf.yaml files, packages or folders of packages")
    if options.tag and sources:
        tagged = filter_by_tag(sources, options.tag)
        if not tagged and not failures:
            raise missing_tag_error(sources, options.tag, where)
        sources = tagged
    paths = list_images(images) if isinstance(images, str | Path) else [Path(p) for p in images]
    if not paths:
        raise InvalidImageError("no images given; pass a folder, a glob or image files")
    if progress.stage is not None:
        progress.stage(f"found {len(sources)} models; checking {len(paths)} images")
    cache = ImageCache()
    check = check_images(paths, axes=options.axes, skip_bad=options.skip_bad_images, max_pixels=options.max_pixels,
                         channels=options.channels, cache=cache)
    if not check.paths:
        raise InvalidImageError(f"none of the {len(paths)} images can be read, so there is nothing to rank on:\n"
                                + "\n".join(f"  {reason}" for _, reason in check.skipped))
    checked: list[ModelSource] = []
    fit = ImageFit(check.paths[0], axes=options.axes, channels=options.channels, max_pixels=options.max_pixels,
                   inputs=options.inputs)
    for source in sources:
        try:
            precheck_package(source.location, max_entry_bytes=options.max_entry_bytes)
        except BioimageCteError as e:
            failures.append(failure_of(source, e))
            continue
        # a model that cannot see these images (3D on 2D, channel count) is named now, before anything loads
        layout = input_layout(read_rdf(source))
        reason = None if layout is None else fit.reason(layout, model=source.location)
        if reason is None:
            checked.append(source)
        else:
            failures.append(ModelFailure(source.name, source.source, Stage.UNFIT, reason, FailureKind.UNFIT))
    mixed = None if options.tag else mixed_tasks_warning(checked)
    dims = mixed_dimensions_warning(checked, fit)
    warnings = [w for w in (mixed, dims) if w] + list(check.warnings)
    warnings += [f"skipped image {p}: {reason}" for p, reason in check.skipped]
    for text in warnings:
        if progress.warning is not None:
            progress.warning(text)
    if progress.plan is not None:
        progress.plan(len(checked), len(check.paths))
    if progress.start is not None:
        progress.start(len(checked) * len(check.paths))
    return _Inputs(checked, failures, list(check.paths), warnings, check.skipped, cache)


def _score(sources: Sequence[ModelSource], paths: Sequence[Path], estimators: Sequence[Estimator],
           options: RankOptions, progress: Progress, labels: Sequence[np.ndarray] | None = None,
           images: ImageCache | None = None) -> tuple[list[ModelResult], list[ModelFailure]]:
    return rank_models(sources, paths, estimators, options, labels=labels, on_image=progress.image,
                       on_model=progress.model, images=images)


def rank(
    models: Sequence[str | Path],
    images: str | Path | Sequence[Path],
    options: RankOptions | None = None,
    *,
    progress: Progress | None = None,
) -> RankingRun:
    """Rank models by estimated transferability to the target images (no labels needed).

    Parameters
    ----------
    models : sequence of str or Path
        rdf.yaml files, package folders or zips, folders of packages, a collection index, URLs.
    images : str, Path or sequence of Path
        A folder, a glob or files of target images.
    options : RankOptions, optional
        Estimator and run options (default: ``RankOptions()``).
    progress : Progress, optional
        Callbacks for warnings and progress.

    Returns
    -------
    RankingRun
        The ranking (best first; models that could not be scored under ``failures``) and its inputs.

    Raises
    ------
    BioimageCteError
        No model found (or none with the tag), or an image cannot be read; one model's failure never raises.
    """
    options = options or RankOptions()
    progress = progress or Progress()
    inputs = _inputs(models, images, options, progress)
    estimator = options.make_estimator()
    sources, paths = inputs.sources, inputs.paths
    choice: dict[str, Any] = {}
    if options.strength == "auto":
        estimator, choice = with_automatic_strength(sources, paths, estimator, options, on_stage=progress.stage)
    n_found, reason = len(paths), "all images"
    if options.budget == "all":
        results, failures = _score(sources, paths, [estimator], options, progress, images=inputs.images)
    else:
        run = rank_adaptive(sources, paths, estimator, options, on_image=progress.image, on_model=progress.model,
                            on_round=progress.round, images=inputs.images)
        results, failures, paths, reason = run.results, run.failures, run.images, run.stop_reason
    ranking = build_ranking(results, estimator, failures=inputs.failures + failures, seed=options.seed,
                            predicted=run_predictions(results, options, tag=options.tag))
    _raise_if_layer_missing(options, ranking.failures[len(inputs.failures):], ranking)
    return RankingRun(ranking=ranking, sources=tuple(sources), images=tuple(paths), options=options,
                      warnings=tuple(inputs.warnings), skipped_images=inputs.skipped, stop_reason=reason,
                      n_images_found=n_found, strength_choice=choice)
def _raise_if_layer_missing(options: RankOptions, failures: Sequence[ModelFailure], ranking: Ranking) -> None:
    scored = sum(1 for s in ranking.scores if s.score == s.score)
    error = layer_missing_everywhere(options.layer, [f.reason for f in failures], scored)
    if error is not None:
        raise error


def evaluate(
    models: Sequence[str | Path],
    images: str | Path | Sequence[Path],
    labels: str | Path,
    options: RankOptions | None = None,
    *,
    estimators: Sequence[str] = LABEL_FREE,
    few_label: int = 2,
    metric: str | None = None,
    progress: Progress | None = None,
) -> EvaluationRun:
    """Compare each estimator's ranking with the ranking by true performance on labelled images.

    Parameters
    ----------
    models, images, options, progress
        As for :func:`rank`; every estimator takes its strength, consistency and repeats from ``options``.
    labels : str or Path
        Folder of label images with the images' file stems (instance labels, 0 = background).
    estimators : sequence of str
        Estimators to compare (default: every label-free one).
    few_label : int
        Also score the few-label oracle: true Dice on the first k labelled images (0 to skip).
    metric : {"dice", "f1", "map"}, optional
        True-performance metric; default dice for the semantic task, map for instances.
    """
    options = options or RankOptions()
    progress = progress or Progress()
    chosen = metric or ("map" if options.task == "instance" else "dice")
    if chosen not in METRICS:
        raise ValueError(f"unknown metric {chosen!r}: use one of {', '.join(METRICS)}")
    ests: list[Estimator] = [options.make_estimator(name) for name in estimators]
    if few_label > 0:
        ests.append(FewLabelOracle(k=few_label))
    inputs = _inputs(models, images, options, progress)
    label_arrays = load_labels(inputs.paths, labels, axes=options.axes, max_pixels=options.max_pixels)
    results, failures = _score(inputs.sources, inputs.paths, ests, options, progress, labels=label_arrays,
                               images=inputs.images)
    failures = inputs.failures + failures
    evaluation = evaluate_rankings(results, ests, metric=chosen, failures=failures, seed=options.seed)
    return EvaluationRun(evaluation=evaluation, sources=tuple(inputs.sources), images=tuple(inputs.paths),
                         options=options, warnings=tuple(inputs.warnings), failures=tuple(failures),
                         skipped_images=inputs.skipped)
