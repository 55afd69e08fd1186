"""Ranking models on a set of target images, and evaluating rankings where labels exist.

:func:`score_model` runs one model over every image once clean and once per perturbation,
feeding every requested estimator from the same clean prediction. :func:`rank_models` loops over
models, one loaded at a time with images streamed from disk, and records a model that fails
(cannot be loaded, is not a segmentation model, crashes) as a :class:`ModelFailure` with its
reason instead of stopping. :func:`build_ranking` turns per-image scores into a
:class:`Ranking`; :func:`evaluate_rankings` compares each estimator's ranking with the ranking by
true performance.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte import __version__
from bioimage_cte.errors import BioimageCteError, ModelRunError, UntrustedCodeError
from bioimage_cte.estimators import ConsensusAgreement, Estimator, FewLabelOracle, RandomScore, instances
from bioimage_cte.evaluation import (
    AgreementStats,
    bootstrap_agreement,
    foreground_dice,
    instance_f1,
    mean_average_precision,
    rank_agreement,
)
from bioimage_cte.images import read_image, to_yx
from bioimage_cte.sources import ModelSource, file_sha256
from bioimage_cte.trust import CodePolicy

#: True-performance metrics: foreground Dice, instance F1 at IoU 0.5, mean AP over IoU 0.5:0.05:0.95.
METRICS = ("dice", "f1", "map")

#: A model whose clean masks cover at least this fraction of the pixels (median over the images) gets a note:
#: consistency cannot judge it, since it stays consistent under any perturbation by marking everything.
SATURATED_FOREGROUND = 0.9


@dataclass(frozen=True)
class ModelFailure:
    """A model that could not be scored, and why."""

    name: str
    source: str
    stage: str
    reason: str


@dataclass(frozen=True)
class ModelResult:
    """Everything one pass of a model over the images produced."""

    source: ModelSource
    per_image: dict[str, list[float]]
    true: dict[str, list[float]] = field(default_factory=dict)
    masks: list[np.ndarray] | None = None
    failures: dict[str, str] = field(default_factory=dict)
    layer: str | None = None
    seconds: float = 0.0
    sha256: str | None = None
    foreground: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModelScore:
    """One model's place in a ranking."""

    name: str
    source: str
    score: float
    rank: int
    n_images: int
    n_valid: int
    n_empty: int
    per_image: tuple[float, ...]
    note: str = ""
    sha256: str | None = None
    foreground_fraction: float = math.nan


@dataclass(frozen=True)
class Ranking:
    """Models ranked by one estimator on one set of images (best first), plus the models that failed."""

    estimator: str
    settings: dict[str, Any]
    scores: tuple[ModelScore, ...]
    failures: tuple[ModelFailure, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "models": [_json_score(s) for s in self.scores],
            "failures": [vars(f) for f in self.failures],
            "settings": {"estimator": self.estimator, **self.settings, "bioimage_cte_version": __version__},
        }


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json_score(s: ModelScore) -> dict[str, Any]:
    return {"name": s.name, "source": s.source, "score": _finite(s.score), "rank": s.rank,
            "n_images": s.n_images, "n_valid": s.n_valid, "n_empty": s.n_empty,
            "per_image": [_finite(v) for v in s.per_image], "note": s.note, "sha256": s.sha256,
            "foreground_fraction": _finite(s.foreground_fraction)}


def load_target(path: Path, *, axes: str | None = None) -> np.ndarray:
    """Read one target image as float32 (y, x) or (z, y, x)."""
    return to_yx(read_image(path), axes=axes, path=path)


def _true_metrics(clean, labels: np.ndarray, out: dict[str, list[float]]) -> None:
    out.setdefault("dice", []).append(foreground_dice(clean.foreground, labels))
    if clean.foreground.ndim == 2:
        pred = instances(clean)
        out.setdefault("f1", []).append(instance_f1(pred, labels))
        out.setdefault("map", []).append(mean_average_precision(pred, labels))


def score_model(
    source: ModelSource,
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    *,
    labels: Sequence[np.ndarray] | None = None,
    axes: str | None = None,
    devices: Sequence[str] = ("cpu",),
    weight_format: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    on_image: Callable[[], None] | None = None,
    code_policy: CodePolicy | None = None,
) -> ModelResult:
    """Run one model over the images and score it with every estimator.

    The model is loaded once; each image is read from disk, predicted clean once, and handed
    with that prediction to every estimator. Grey-box estimators need ``pytorch_state_dict``
    weights whose architecture may run (``code_policy``, see :mod:`bioimage_cte.trust`): a model
    without them still gets its black-box scores, and the grey-box estimators record why they
    could not run in ``failures``. When no estimator can run and nothing else needs predictions
    (labels, cross-model estimators), the model is not run at all.

    Raises
    ------
    BioimageCteError
        When the model cannot be loaded or predicted at all (the caller records it as failed).
    """
    from bioimage_cte.predictors import load_model, make_predictor

    start = time.perf_counter()
    descr = load_model(source.location)
    failures: dict[str, str] = {}
    greybox = any(e.needs_greybox for e in estimators)
    # messages name the package file: a zoo run lists hundreds of them
    name = source.location
    keep_masks = any(e.cross_model for e in estimators)
    try:
        predictor = make_predictor(descr, name=name, greybox=greybox, weight_format=weight_format,
                                   layer=layer, devices=devices, code_policy=code_policy)
    except BioimageCteError as e:
        if not greybox:
            raise
        failures.update({e_.name: str(e) for e_ in estimators if e_.needs_greybox})
        if labels is None and not keep_masks and all(e.needs_greybox for e in estimators):
            return ModelResult(source, {}, {}, None, failures, None, time.perf_counter() - start,
                               file_sha256(source.location))
        predictor = make_predictor(descr, name=name, greybox=False, weight_format=weight_format,
                                   devices=devices, code_policy=code_policy)
    runnable = [e for e in estimators if e.name not in failures and not e.cross_model and not e.needs_labels]
    per_image: dict[str, list[float]] = {e.name: [] for e in runnable}
    true: dict[str, list[float]] = {}
    masks: list[np.ndarray] | None = [] if keep_masks else None
    foreground: list[float] = []
    with predictor:
        for i, path in enumerate(image_paths):
            image = load_target(path, axes=axes)
            with _model_errors(source, path):
                clean = predictor.predict(image)
                _check_prediction(clean, source, path)
                mask = clean.foreground > 0.5
                foreground.append(float(mask.mean()))
                for estimator in runnable:
                    per_image[estimator.name].append(estimator.score_image(predictor, image, clean, seed=seed + i))
            if masks is not None:
                masks.append(mask)
            if labels is not None:
                _true_metrics(clean, labels[i], true)
                for estimator in estimators:
                    if isinstance(estimator, FewLabelOracle):
                        per_image.setdefault(estimator.name, []).append(
                            estimator.score_labelled(clean, labels[i], i))
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


def _check_prediction(clean, source: ModelSource, path: Path) -> None:
    if not np.isfinite(clean.foreground).all():
        raise ModelRunError(f"{source.location}: the model returned NaN or inf on {path}; "
                               "the model is broken for this input, check its weights and preprocessing")


def rank_models(
    sources: Sequence[ModelSource],
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
    on_model: Callable[[ModelSource], None] | None = None,
    **options: Any,
) -> tuple[list[ModelResult], list[ModelFailure]]:
    """Score every model; a model that fails is recorded with its reason and the others go on.

    ``options`` are passed to :func:`score_model` (axes, devices, weight_format, layer, seed,
    code_policy). A model skipped because it needs package code the policy does not allow is
    recorded with stage ``"skipped"``.
    """
    results: list[ModelResult] = []
    failures: list[ModelFailure] = []
    for source in sources:
        if on_model is not None:
            on_model(source)
        try:
            results.append(score_model(source, image_paths, estimators, labels=labels, on_image=on_image,
                                       **options))
        except Exception as e:  # one broken zoo entry must never stop the run
            reason = str(e) if isinstance(e, BioimageCteError) else f"{type(e).__name__}: {e}"
            stage = "skipped" if isinstance(e, UntrustedCodeError) else "predict"
            failures.append(ModelFailure(source.name, source.source, stage, _one_line(reason)))
    return results, failures


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def _per_image_scores(results: Sequence[ModelResult], estimator: Estimator) -> list[list[float] | None]:
    if isinstance(estimator, ConsensusAgreement):
        usable = [r.masks for r in results if r.masks is not None]
        if len(usable) < 2:
            return [None for _ in results]
        scores = iter(estimator.score_models(usable))
        return [next(scores) if r.masks is not None else None for r in results]
    return [r.per_image.get(estimator.name) for r in results]


def build_ranking(
    results: Sequence[ModelResult],
    estimator: Estimator,
    *,
    failures: Sequence[ModelFailure] = (),
    seed: int = 0,
) -> Ranking:
    """Rank models by one estimator, best first; models without a valid score go last with a note."""
    failed = list(failures)
    rows = []
    for result, values in zip(results, _per_image_scores(results, estimator), strict=True):
        if values is None:
            reason = result.failures.get(estimator.name, "estimator did not run for this model")
            failed.append(ModelFailure(result.source.name, result.source.source, estimator.name, reason))
            continue
        agg = estimator.aggregate(values)
        score = agg.score
        if isinstance(estimator, RandomScore):
            score = float(np.random.default_rng([seed, zlib.crc32(result.source.name.encode())]).random())
        fraction = float(np.median(result.foreground)) if result.foreground else math.nan
        note = "" if math.isfinite(score) else f"no foreground predicted on any of the {agg.n_images} images"
        if fraction >= SATURATED_FOREGROUND:
            note = f"marks {fraction:.0%} of the pixels as foreground: its score says little, check its predictions"
        rows.append((result, score, agg, tuple(values), note, fraction))
    rows.sort(key=lambda r: (not math.isfinite(r[1]), -r[1] if math.isfinite(r[1]) else 0.0))
    scores = tuple(
        ModelScore(r.source.name, r.source.source, score, rank, agg.n_images, agg.n_valid, agg.n_empty, values, note,
                   r.sha256, fraction)
        for rank, (r, score, agg, values, note, fraction) in enumerate(rows, start=1)
    )
    return Ranking(estimator.name, dict(estimator.settings()), scores, tuple(failed))


@dataclass(frozen=True)
class Evaluation:
    """Each estimator's ranking next to the ranking by true performance on labelled images."""

    metric: str
    true: dict[str, dict[str, float]]
    rankings: dict[str, Ranking]
    agreement: dict[str, AgreementStats]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "true_performance": {m: {k: _finite(v) for k, v in d.items()} for m, d in self.true.items()},
            "agreement": {k: v.to_json_dict() for k, v in self.agreement.items()},
            "rankings": {k: v.to_json_dict() for k, v in self.rankings.items()},
        }


def true_performance(results: Sequence[ModelResult]) -> dict[str, dict[str, float]]:
    """Mean of each true metric over the images, per model."""
    return {r.source.name: {k: float(np.nanmean(v)) for k, v in r.true.items()} for r in results}


def evaluate_rankings(
    results: Sequence[ModelResult],
    estimators: Sequence[Estimator],
    *,
    metric: str = "dice",
    failures: Sequence[ModelFailure] = (),
    seed: int = 0,
    n_permutations: int = 1000,
    n_boot: int = 200,
) -> Evaluation:
    """Compare each estimator's ranking with the ranking by the true ``metric`` (dice, f1 or map)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    true = true_performance(results)
    rankings, agreement = {}, {}
    for estimator in estimators:
        ranking = build_ranking(results, estimator, failures=failures, seed=seed)
        rankings[estimator.name] = ranking
        by_name = {s.name: s for s in ranking.scores}
        names = [r.source.name for r in results if r.source.name in by_name]
        if len(names) < 3:
            continue
        est = np.array([by_name[n].score for n in names])
        truth = np.array([true[n][metric] for n in names])
        stats = rank_agreement(est, truth, n_permutations=n_permutations, rng=seed)
        if not isinstance(estimator, RandomScore):
            per_image = np.array([by_name[n].per_image for n in names], dtype=float)
            spearman_ci, kendall_ci = bootstrap_agreement(per_image, truth, n_boot=n_boot, rng=seed)
            stats = replace(stats, spearman_ci=spearman_ci, kendall_ci=kendall_ci)
        agreement[estimator.name] = stats
    return Evaluation(metric, true, rankings, agreement)
