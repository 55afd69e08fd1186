"""Each ranked model's predicted Dice: its label-free signals in this run, through the calibration.

The signals are the ones the calibration was fitted on (:mod:`bioimage_cte.cte.calibration`): a model's median
``tta`` consistency over the images (when the run scored ``tta``, the default) and its median Dice with the
majority vote of every candidate's clean masks (``consensus``, when at least three candidates were scored), and
its median foreground fraction (support check only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bioimage_cte.cte.calibration import Calibration, DicePrediction, load_calibration
from bioimage_cte.cte.estimators import TTA_FORMS, ConsensusAgreement
from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.tags import matches_tag

__all__ = ["calibration_task", "model_signals", "predicted_dice", "run_predictions"]


def _median(values: Sequence[float] | None) -> float:
    v = np.asarray(values if values is not None else [], dtype=float)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan


def model_signals(results: Sequence[ModelResult], *, min_models: int = 3) -> list[dict[str, float]]:
    """Per result: ``tta``, ``consensus`` and ``foreground`` medians over the images (nan where not measured)."""
    with_masks = [i for i, r in enumerate(results) if r.masks]
    consensus: dict[int, float] = {}
    if len(with_masks) >= min_models and len({len(results[i].masks) for i in with_masks}) == 1:
        per_model = ConsensusAgreement().score_models([results[i].masks for i in with_masks])
        consensus = {i: _median(v) for i, v in zip(with_masks, per_model, strict=True)}
    return [{"tta": _median(_tta(r)),
             "consensus": consensus.get(i, math.nan),
             "foreground": _median(r.foreground)} for i, r in enumerate(results)]


def _tta(result: ModelResult) -> list[float] | None:
    """The model's per-image ``tta`` (the combined estimators store it under their own name)."""
    return next((result.per_image[k] for k in TTA_FORMS if k in result.per_image), None)


def calibration_task(tag: str | None, calibration: Calibration) -> str | None:
    """The calibrated task a ``--tag`` names (its synonyms and plural included), else the tag itself (or None)."""
    if tag is None:
        return None
    return next((t for t in calibration.tasks if matches_tag([t], tag)), tag)


def predicted_dice(results: Sequence[ModelResult], calibration: Calibration | None, *,
                   tag: str | None) -> dict[str, DicePrediction]:
    """Each result's predicted Dice by model name (empty without a calibration)."""
    if calibration is None:
        return {}
    task = calibration_task(tag, calibration)
    out = {}
    for result, signals in zip(results, model_signals(results, min_models=calibration.min_models), strict=True):
        out[result.source.name] = calibration.predict(signals, task=task, volumetric=result.volumetric)
    return out


def run_predictions(results: Sequence[ModelResult], options: RankOptions, *,
                    tag: str | None) -> dict[str, DicePrediction]:
    """Each result's predicted Dice as a run with ``options`` gives it (none when ``options.predict_dice`` is off),
    with the calibration the options name; ``tag`` names the task (a ``--tag``, or a zoo target's task)."""
    if not options.predict_dice:
        return {}
    from pathlib import Path

    calibration = load_calibration(None if options.calibration is None else Path(options.calibration))
    return predicted_dice(results, calibration, tag=tag)
