"""Turning per-image scores into a ranking: models best first, with their intervals of evidence and notes.

:func:`build_ranking` ranks the :class:`~bioimage_cte.cte.outcomes.ModelResult` values of one run by one estimator
into a :class:`Ranking`, whose :meth:`Ranking.to_json_dict` is the ranking JSON that ``rank --output`` writes,
:mod:`bioimage_cte.outputs.annotate` reads and the zoo flow publishes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.version import __version__
from bioimage_cte.cte.calibration import DicePrediction
from bioimage_cte.cte.combined import TIE_TOLERANCE
from bioimage_cte.cte.consistency import bootstrap_intervals
from bioimage_cte.cte.estimators import Estimator
from bioimage_cte.cte.outcomes import FailureKind, ModelFailure, ModelResult, Stage
from bioimage_cte.cte.seeds import seed_sequence
from bioimage_cte.predict.views import views_batched
from bioimage_cte.run.options import RankOptions

__all__ = ["NEAR_EMPTY_FOREGROUND", "SATURATED_FOREGROUND", "ModelScore", "Ranking", "build_ranking", "interval_label",
           "near_constant", "ranking_json", "read_ranking"]

#: A model whose clean masks cover at least this fraction of the pixels (median over the images) gets a note:
#: consistency cannot judge it, since it stays consistent under any perturbation by marking everything.
SATURATED_FOREGROUND = 0.9
#: A model whose clean masks cover at most this fraction (median) is near-constant the other way (almost empty).
NEAR_EMPTY_FOREGROUND = 0.01


def near_constant(fraction: float) -> bool:
    """Whether a median foreground fraction is near-constant: such a model is never ranked first (issue #25).

    Consistency cannot judge a mask that is (almost) everything or (almost) nothing, and no best model on any of the
    40 development targets had a median foreground outside 0.16-0.48.

    Examples
    --------
    >>> near_constant(0.98), near_constant(0.3), near_constant(0.005), near_constant(float("nan"))
    (True, False, True, False)
    """
    return math.isfinite(fraction) and (fraction >= SATURATED_FOREGROUND or fraction <= NEAR_EMPTY_FOREGROUND)


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
    interval: tuple[float, float] = (math.nan, math.nan)
    weights: dict[str, str] | None = None
    #: the output tensor and channel scored, and how they were chosen (see :mod:`bioimage_cte.zoo.readout`)
    output: dict[str, Any] | None = None
    #: which format version of the description ran, converted or not (:class:`bioimage_cte.zoo.models.FormatUse`)
    rdf_format: dict[str, Any] | None = None
    #: estimator-specific detail, e.g. ``cte``'s families and per-family values
    details: dict[str, Any] | None = None
    #: the top model, or a model the images cannot tell apart from it (paired bootstrap, see build_ranking)
    tied_with_top: bool = False
    #: its predicted Dice with a 90 % interval, or why there is none (:mod:`bioimage_cte.run.calibrated`)
    predicted: DicePrediction | None = None


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
            "failures": [{**vars(f), "stage": str(f.stage), "kind": str(f.kind)} for f in self.failures],
            "settings": {"estimator": self.estimator, **self.settings, "bioimage_cte_version": __version__},
        }


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _json_score(s: ModelScore) -> dict[str, Any]:
    return {"name": s.name, "source": s.source, "score": finite(s.score), "rank": s.rank,
            "n_images": s.n_images, "n_valid": s.n_valid, "n_empty": s.n_empty,
            "per_image": [finite(v) for v in s.per_image], "note": s.note, "sha256": s.sha256,
            "foreground_fraction": finite(s.foreground_fraction),
            "interval": [finite(s.interval[0]), finite(s.interval[1])], "output": s.output,
            "weights": s.weights, "format": s.rdf_format, "tied_with_top": s.tied_with_top,
            **(s.predicted.to_json_dict() if s.predicted is not None else {}),
            **(s.details or {})}


#: below this many images a bootstrap of the median is little more than the range of the per-image scores
FEW_IMAGES = 8


def interval_label(n_images: int) -> str:
    """What a model's interval is, worded for the number of images it rests on.

    Examples
    --------
    >>> interval_label(20)
    '95 % bootstrap interval of the median over 20 images'
    >>> interval_label(3)
    'spread of the median over only 3 images (about their min-max; too few images for a 95 % interval)'
    """
    if n_images >= FEW_IMAGES:
        return f"95 % bootstrap interval of the median over {n_images} images"
    return (f"spread of the median over only {n_images} images (about their min-max; too few images for a "
            "95 % interval)")


def _tied_with_top(top: Sequence[float], other: Sequence[float], *, seed: int, model: str,
                   n_boot: int = 2000) -> bool:
    """Whether the images cannot tell ``other`` from ``top``: the paired bootstrap of the difference of medians
    (both models resampled on the same images) has 0 or less (up to round-off) inside its 95 % interval."""
    a = np.array([np.nan if v is None else v for v in top], dtype=float)
    b = np.array([np.nan if v is None else v for v in other], dtype=float)
    if a.shape != b.shape:  # not scored on the same images: nothing to pair
        return True
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2:
        return True  # one common image is no evidence either way
    a, b = a[both], b[both]
    rng = np.random.default_rng(seed_sequence(seed, "bootstrap-top", model=model))
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    diff = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    # a format twin differs from its source by float round-off only: that is no lead
    return bool(np.percentile(diff, 2.5) <= TIE_TOLERANCE)


def per_image_scores(results: Sequence[ModelResult], estimator: Estimator) -> list[list[float] | None]:
    """Each model's per-image values under ``estimator`` (combined across models where it needs them)."""
    if hasattr(estimator, "score_results"):  # per-model values combined across the models (cte)
        return estimator.score_results(results)
    if estimator.cross_model:
        usable = [r.masks for r in results if r.masks is not None]
        if len(usable) < 2:
            return [None for _ in results]
        scores = iter(estimator.score_models(usable))
        return [next(scores) if r.masks is not None else None for r in results]
    return [r.per_image.get(estimator.name) for r in results]


def _constant_prediction(foreground: Sequence[float]) -> str | None:
    """A note when the clean mask is all foreground or all background on every image, else None."""
    if not foreground or any(0.0 < f < 1.0 for f in foreground):
        return None
    if all(f == 0.0 for f in foreground):
        return f"no foreground predicted on any of the {len(foreground)} images: not scored"
    what = "foreground everywhere" if all(f == 1.0 for f in foreground) else "all foreground or all background"
    return (f"predicts {what} on every one of the {len(foreground)} images: a constant prediction carries no "
            "information, so it is not scored")


def build_ranking(
    results: Sequence[ModelResult],
    estimator: Estimator,
    *,
    failures: Sequence[ModelFailure] = (),
    seed: int = 0,
    predicted: Mapping[str, DicePrediction] | None = None,
) -> Ranking:
    """Rank models by one estimator, best first; models without a valid score go last with a note.

    A model whose clean prediction is constant (all foreground or all background on every image) gets no score:
    any perturbation leaves such a prediction unchanged, so its consistency would be perfect and meaningless.
    ``predicted``: each model's predicted Dice by name (:func:`bioimage_cte.run.calibrated.predicted_dice`).
    """
    predicted = predicted or {}
    failed = list(failures)
    rows = []
    for result, values in zip(results, per_image_scores(results, estimator), strict=True):
        if values is None:
            stage, reason = result.failures.get(estimator.name, (Stage.ESTIMATOR, "estimator did not run"))
            kind = FailureKind.UNTRUSTED_CODE if stage == Stage.SKIPPED else FailureKind.ESTIMATOR
            failed.append(ModelFailure(result.source.name, result.source.source, stage, reason, kind))
            continue
        agg = estimator.aggregate(values, model=result.source.name, seed=seed)
        score = agg.score
        fraction = float(np.median(result.foreground)) if result.foreground else math.nan
        note = "" if math.isfinite(score) else f"no foreground predicted on any of the {agg.n_images} images"
        if fraction >= SATURATED_FOREGROUND:
            note = (f"marks {fraction:.0%} of the pixels as foreground: its score says little, check its predictions; "
                    "ranked after the models that are not near-constant")
        elif math.isfinite(score) and near_constant(fraction):
            note = (f"marks only {fraction:.1%} of the pixels as foreground: its score says little, check its "
                    "predictions; ranked after the models that are not near-constant")
        constant = _constant_prediction(result.foreground)
        if constant is not None:  # perfectly consistent and uninformative: it must not win
            score, note = math.nan, constant
        interval = (math.nan, math.nan)
        if not estimator.random:  # a drawn score has no per-image evidence to resample
            lo, hi = bootstrap_intervals([values], seed=seed_sequence(seed, "bootstrap", model=result.source.name))[0]
            interval = (float(lo), float(hi))
        details = estimator.model_details(result) if hasattr(estimator, "model_details") else None
        rows.append((result, score, agg, tuple(values), note, fraction, interval, details))
    # a near-constant model goes after every other scored model: perfectly consistent by marking (almost) everything
    # or nothing, it must never win
    rows.sort(key=lambda r: (not math.isfinite(r[1]), near_constant(r[5]), -r[1] if math.isfinite(r[1]) else 0.0))
    ties = [False] * len(rows)
    if rows and math.isfinite(rows[0][1]) and not estimator.random:
        ties[0] = True
        for i, row in enumerate(rows[1:], start=1):
            ties[i] = math.isfinite(row[1]) and _tied_with_top(rows[0][3], row[3], seed=seed, model=row[0].source.name)
    scores = tuple(
        ModelScore(r.source.name, r.source.source, score, rank, agg.n_images, agg.n_valid, agg.n_empty, values, note,
                   r.sha256, fraction, interval, output=r.output, weights=r.weights, rdf_format=r.rdf_format,
                   details=details, tied_with_top=tie, predicted=predicted.get(r.source.name))
        for rank, ((r, score, agg, values, note, fraction, interval, details), tie)
        in enumerate(zip(rows, ties, strict=True), start=1)
    )
    return Ranking(estimator.name, dict(estimator.settings()), scores, tuple(failed))


def ranking_json(ranking: Ranking, options: RankOptions, *, images: str, n_images: int) -> dict[str, Any]:
    """A ranking as JSON with the run's settings; the one place those settings are written.

    Besides the options, the settings say whether the flipped/rotated views of an image ran as one batch
    (``views_batched``: on a GPU, where a model's batch axis allows; never on a CPU, where it was measured slower)
    and why.
    """
    payload = ranking.to_json_dict()
    batched, why = views_batched(options.device)
    payload["settings"].update({"images": images, "n_images": n_images, **options.run_settings(),
                                "views_batched": batched, "views_batched_reason": why})
    return payload


_WRITTEN_BY = "pass the JSON written by 'bioimage-cte rank --output'"
#: field of each model -> the types it may have (None: JSON null)
_MODEL_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"), "source": ((str,), "a string"), "rank": ((int,), "a whole number"),
    "score": ((int, float, type(None)), "a number or null")}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def read_ranking(path: Path) -> dict[str, Any]:
    """A ranking JSON (``rank --output``), its shape checked: one-line errors name the file and the field.

    Raises
    ------
    BioimageCteError
        The file cannot be read, is not JSON, or lacks a field the reports and write-back use (``models`` with
        each model's name, source, rank and score; ``settings.estimator``; ``failures`` if present).
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as e:
        raise BioimageCteError(f"cannot read ranking {path}: {e.strerror or e}; {_WRITTEN_BY}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise BioimageCteError(f"{path} is not valid JSON{where}; {_WRITTEN_BY}") from e

    def wrong(field: str, value: Any, expected: str) -> BioimageCteError:
        return BioimageCteError(f"{path} is not a ranking: {field} is {_kind(value)}, expected {expected}; "
                                f"{_WRITTEN_BY}")

    if not isinstance(payload, dict):
        raise wrong("the file", payload, "an object")
    models, settings = payload.get("models"), payload.get("settings")
    if not isinstance(models, list):
        raise wrong("'models'", models, "a list of models")
    if not isinstance(settings, dict):
        raise wrong("'settings'", settings, "an object")
    if not isinstance(settings.get("estimator"), str):
        raise wrong("'settings.estimator'", settings.get("estimator"), "an estimator name")
    for i, model in enumerate(models):
        if not isinstance(model, dict):
            raise wrong(f"'models[{i}]'", model, "an object")
        for field, (types, expected) in _MODEL_FIELDS.items():
            value = model.get(field)
            if isinstance(value, bool) or not isinstance(value, types):
                raise wrong(f"'models[{i}].{field}'", value, expected)
    failures = payload.get("failures", [])
    if not isinstance(failures, list) or not all(isinstance(f, dict) for f in failures):
        raise wrong("'failures'", failures, "a list of objects")
    return payload
