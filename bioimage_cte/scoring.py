"""Scoring models on target images: each model runs once clean and once per perturbation.

:func:`score_model` runs one model over every image, feeding every requested estimator from the same clean
prediction. :func:`rank_models` scores models one at a time (images streamed from disk) and records a model that
fails (cannot be loaded, is not a segmentation model, crashes, needs code the user did not allow) as a
:class:`ModelFailure` with its :class:`Stage` and reason instead of stopping. :func:`overlay_predictions` re-runs
one model on a few images with a ranking's settings, for the report's overlays.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.errors import BioimageCteError, ModelRunError, UntrustedCodeError, one_line
from bioimage_cte.estimators import Estimator, Perturbing
from bioimage_cte.images import load_target
from bioimage_cte.metrics import foreground_dice, instance_f1, mean_average_precision
from bioimage_cte.options import RankOptions
from bioimage_cte.segmentation import Prediction, instances
from bioimage_cte.sources import ModelSource, file_sha256

__all__ = ["ModelFailure", "ModelResult", "Stage", "overlay_predictions", "rank_models", "score_model"]


class Stage(StrEnum):
    """Where a model dropped out of a ranking."""

    #: the package could not be loaded, or the model crashed or returned NaN
    PREDICT = "predict"
    #: the model needs package code the user did not allow (``--trust-code``)
    SKIPPED = "skipped"
    #: this estimator cannot run on this model (e.g. grey-box without ``pytorch_state_dict`` weights)
    ESTIMATOR = "estimator"


@dataclass(frozen=True)
class ModelFailure:
    """A model that could not be scored, where and why."""

    name: str
    source: str
    stage: Stage
    reason: str


@dataclass(frozen=True)
class ModelResult:
    """Everything one pass of a model over the images produced.

    ``failures`` maps an estimator that could not run for this model to its stage and reason.
    """

    source: ModelSource
    per_image: dict[str, list[float]]
    true: dict[str, list[float]] = field(default_factory=dict)
    masks: list[np.ndarray] | None = None
    failures: dict[str, tuple[Stage, str]] = field(default_factory=dict)
    layer: str | None = None
    seconds: float = 0.0
    sha256: str | None = None
    foreground: list[float] = field(default_factory=list)


def _true_metrics(clean: Prediction, labels: np.ndarray, out: dict[str, list[float]]) -> None:
    out.setdefault("dice", []).append(foreground_dice(clean.foreground, labels))
    if clean.foreground.ndim == 2:
        pred = instances(clean)
        out.setdefault("f1", []).append(instance_f1(pred, labels))
        out.setdefault("map", []).append(mean_average_precision(pred, labels))


def _stage(e: BaseException) -> Stage:
    return Stage.SKIPPED if isinstance(e, UntrustedCodeError) else Stage.ESTIMATOR


def score_model(
    source: ModelSource,
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    options: RankOptions,
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
) -> ModelResult:
    """Run one model over the images and score it with every estimator.

    The model is loaded once; each image is read from disk, predicted clean once, and handed
    with that prediction to every estimator. Grey-box estimators need ``pytorch_state_dict``
    weights whose architecture may run (``options.code_policy()``, see :mod:`bioimage_cte.trust`):
    a model without them still gets its black-box scores, and the grey-box estimators record why
    they could not run in ``failures``. When no estimator can run and nothing else needs
    predictions (labels, cross-model estimators), the model is not run at all.

    Raises
    ------
    BioimageCteError
        When the model cannot be loaded or predicted at all (the caller records it as failed).
    """
    from bioimage_cte.predictors import load_model, make_predictor

    start = time.perf_counter()
    descr = load_model(source.location)
    failures: dict[str, tuple[Stage, str]] = {}
    greybox = any(e.needs_greybox for e in estimators)
    # messages name the package file: a zoo run lists hundreds of them
    name = source.location
    keep_masks = any(e.cross_model for e in estimators)
    common = dict(name=name, weight_format=options.weight_format, devices=[options.device],
                  code_policy=options.code_policy())
    try:
        predictor = make_predictor(descr, greybox=greybox, layer=options.layer, **common)
    except BioimageCteError as e:
        if not greybox:
            raise
        failures.update({est.name: (_stage(e), str(e)) for est in estimators if est.needs_greybox})
        if labels is None and not keep_masks and all(est.needs_greybox for est in estimators):
            return ModelResult(source, {}, {}, None, failures, None, time.perf_counter() - start,
                               file_sha256(source.location))
        predictor = make_predictor(descr, greybox=False, **common)
    per_image_scored = [e for e in estimators if e.name not in failures and not e.cross_model and not e.needs_labels]
    labelled = [e for e in estimators if e.needs_labels]
    per_image: dict[str, list[float]] = {e.name: [] for e in per_image_scored + labelled}
    true: dict[str, list[float]] = {}
    masks: list[np.ndarray] | None = [] if keep_masks else None
    foreground: list[float] = []
    with predictor:
        for i, path in enumerate(image_paths):
            image = load_target(path, axes=options.axes)
            with _model_errors(source, path):
                clean = predictor.predict(image)
                _check_prediction(clean, source, path)
                mask = clean.foreground > 0.5
                foreground.append(float(mask.mean()))
                for estimator in per_image_scored:
                    per_image[estimator.name].append(
                        estimator.score_image(predictor, image, clean, seed=options.seed, index=i))
            if masks is not None:
                masks.append(mask)
            if labels is not None:
                _true_metrics(clean, labels[i], true)
                for estimator in labelled:
                    per_image[estimator.name].append(estimator.score_labelled(clean, labels[i], i))
            if on_image is not None:
                on_image()
        layer_used = getattr(predictor, "layer", None)
    return ModelResult(source, per_image, true, masks, failures, layer_used, time.perf_counter() - start,
                       file_sha256(source.location), foreground)


@contextlib.contextmanager
def _model_errors(source: ModelSource, path: Path) -> Iterator[None]:
    """Turn a crash inside the model's forward pass into one line naming the package and the image."""
    try:
        yield
    except BioimageCteError:
        raise
    except Exception as e:
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            raise  # not the package's fault, and worth a retry
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise ModelRunError(f"{source.location}: the model crashed on {path} ({type(e).__name__}: {first}); the "
                            "package's network does not run on this input, check it with 'bioimageio test'") from e


def _check_prediction(clean: Prediction, source: ModelSource, path: Path) -> None:
    if not np.isfinite(clean.foreground).all():
        raise ModelRunError(f"{source.location}: the model returned NaN or inf on {path}; "
                            "the model is broken for this input, check its weights and preprocessing")


def failure_of(source: ModelSource, e: BaseException) -> ModelFailure:
    """The failure record of a model whose scoring raised ``e``."""
    reason = str(e) if isinstance(e, BioimageCteError) else f"{type(e).__name__}: {e}"
    stage = Stage.SKIPPED if isinstance(e, UntrustedCodeError) else Stage.PREDICT
    return ModelFailure(source.name, source.source, stage, one_line(reason))


def rank_models(
    sources: Sequence[ModelSource],
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    options: RankOptions,
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
    on_model: Callable[[ModelSource], None] | None = None,
) -> tuple[list[ModelResult], list[ModelFailure]]:
    """Score every model, one loaded at a time; a model that fails is recorded with its reason and the others go on.

    A model skipped because it needs package code the policy does not allow is recorded with stage
    :attr:`Stage.SKIPPED`.
    """
    results: list[ModelResult] = []
    failures: list[ModelFailure] = []
    for source in sources:
        if on_model is not None:
            on_model(source)
        try:
            results.append(score_model(source, image_paths, estimators, options, labels=labels, on_image=on_image))
        except Exception as e:  # one broken zoo entry must never stop the run
            failures.append(failure_of(source, e))
    return results, failures


def overlay_predictions(
    location: str, image_paths: Sequence[Path], indices: Sequence[int], options: RankOptions, *,
    on_image: Callable[[], None] | None = None,
) -> list[tuple[np.ndarray, Prediction, Prediction | None]]:
    """Re-run one model on a few images with a ranking's options: (image, clean, perturbed or None) per image.

    The perturbed prediction is the first perturbed pass scoring made on that image (same draw), so a report
    shows what was scored.
    """
    from bioimage_cte.predictors import load_model, make_predictor

    estimator: Any = options.make_estimator()
    perturbing = isinstance(estimator, Perturbing)
    predictor = make_predictor(load_model(location), name=location, greybox=estimator.needs_greybox,
                               layer=options.layer, devices=[options.device], code_policy=options.code_policy(),
                               weight_format=None if estimator.needs_greybox else options.weight_format)
    rows = []
    with predictor:
        for i in indices:
            image = load_target(Path(image_paths[i]), axes=options.axes)
            clean = predictor.predict(image)
            perturbed = (estimator.perturbed_prediction(predictor, image, seed=options.seed, index=i)
                         if perturbing else None)
            rows.append((image, clean, perturbed))
            if on_image is not None:
                on_image()
    return rows
