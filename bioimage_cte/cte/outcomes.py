"""What scoring one model produces: its per-image values (:class:`ModelResult`), or why it dropped out.

Shared by the estimators that combine models (``cte``), the ranking, the adaptive budget, evaluation and the zoo
jobs, so it lives in the lowest stage that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError, UntrustedCodeError, one_line
from bioimage_cte.zoo.sources import ModelSource

__all__ = ["ModelFailure", "ModelResult", "Stage", "failure_of"]


class Stage(StrEnum):
    """Where a model dropped out of a ranking."""

    #: the package could not be loaded, or the model crashed or returned NaN
    PREDICT = "predict"
    #: the model needs package code the user did not allow (``--trust-code``)
    SKIPPED = "skipped"
    #: this estimator cannot run on this model (e.g. grey-box without ``pytorch_state_dict`` weights)
    ESTIMATOR = "estimator"
    #: the model cannot see these images (a 3D model on 2D images, another input channel count): not loaded
    UNFIT = "unfit"


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
    #: which output tensor and channel were scored, and how they were chosen (``Readout.to_json_dict``)
    output: dict[str, Any] | None = None
    #: the weights the model ran with: format, grey-box or black-box access, and why (bioimage_cte.zoo.weights)
    weights: dict[str, str] | None = None


def failure_of(source: ModelSource, e: BaseException) -> ModelFailure:
    """The failure record of a model whose scoring raised ``e``."""
    reason = str(e) if isinstance(e, BioimageCteError) else f"{type(e).__name__}: {e}"
    stage = Stage.SKIPPED if isinstance(e, UntrustedCodeError) else Stage.PREDICT
    return ModelFailure(source.name, source.source, stage, one_line(reason))
