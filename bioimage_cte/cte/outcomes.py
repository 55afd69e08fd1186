"""What scoring one model produces: its per-image values (:class:`ModelResult`), or why it dropped out.

Shared by the estimators that combine models (``cte``), the ranking, the adaptive budget, evaluation and the zoo
jobs, so it lives in the lowest stage that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from bioimage_cte.base.errors import (
    BioimageCteError,
    InvalidImageError,
    InvalidModelError,
    ModelRunError,
    ModelTimeoutError,
    NotSegmentationModelError,
    UnsafeArchiveError,
    UnsupportedModelError,
    UntrustedCodeError,
    one_line,
)
from bioimage_cte.zoo.sources import ModelSource

__all__ = ["FailureKind", "ModelFailure", "ModelResult", "Stage", "failure_kind", "failure_of"]


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


class FailureKind(StrEnum):
    """What kind of failure a model had: a stable class for scripts and tests, beside the worded ``reason``.

    The README's "Why a model is not ranked" table lists them with an example each.
    """

    #: a valid model, but its output is no foreground-like map of the image (no sigmoid/softmax/binarize and no
    #: ``segmentation`` tag, or no y/x axes): bioimage-cte ranks segmentation models only
    NOT_SEGMENTATION = "not-segmentation"
    #: its weights need Python code shipped in the package, which runs only with ``--trust-code``
    UNTRUSTED_CODE = "untrusted-code"
    #: a segmentation model whose inputs or outputs cannot be fed or scored (a time axis, an input of a size
    #: that refers to another tensor, an output without the input's spatial axes)
    UNSUPPORTED = "unsupported"
    #: the model cannot see these images (3D model on 2D images, another channel count, another task): not loaded
    UNFIT = "unfit"
    #: not a readable, valid bioimageio model package (damaged, unsafe, fails validation, weights do not load)
    INVALID_PACKAGE = "invalid-package"
    #: the target images cannot be fed to this model
    IMAGE = "image"
    #: the model loaded but crashed, or returned NaN/inf, on an image
    MODEL_ERROR = "model-error"
    #: the model did not finish within ``--time-limit``
    TIMEOUT = "timeout"
    #: an estimator cannot run on this model (e.g. grey-box without weights that expose features)
    ESTIMATOR = "estimator"
    #: the run stopped before the model was scored
    NOT_SCORED = "not-scored"
    #: anything else: a bug in bioimage-cte or a dependency (the reason names the exception)
    ERROR = "error"


@dataclass(frozen=True)
class ModelFailure:
    """A model that could not be scored, where, why (``reason``, one line) and of which :class:`FailureKind`."""

    name: str
    source: str
    stage: Stage
    reason: str
    kind: FailureKind = FailureKind.ERROR


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
    #: the model predicted volumes (a 3D model on z-stacks): the Dice calibration saw 2D only
    volumetric: bool = False
    #: which format version of the description ran, converted or not (bioimage_cte.zoo.models.FormatUse)
    rdf_format: dict[str, Any] | None = None


# most specific first: NotSegmentationModelError and UnsupportedModelError are InvalidModelErrors
_KINDS: tuple[tuple[type[BaseException], FailureKind], ...] = (
    (UntrustedCodeError, FailureKind.UNTRUSTED_CODE),
    (NotSegmentationModelError, FailureKind.NOT_SEGMENTATION),
    (UnsupportedModelError, FailureKind.UNSUPPORTED),
    (InvalidModelError, FailureKind.INVALID_PACKAGE),
    (UnsafeArchiveError, FailureKind.INVALID_PACKAGE),
    (InvalidImageError, FailureKind.IMAGE),
    (ModelTimeoutError, FailureKind.TIMEOUT),
    (ModelRunError, FailureKind.MODEL_ERROR),
)


def failure_kind(e: BaseException) -> FailureKind:
    """The :class:`FailureKind` of an error that stopped a model."""
    return next((kind for cls, kind in _KINDS if isinstance(e, cls)), FailureKind.ERROR)


def failure_of(source: ModelSource, e: BaseException) -> ModelFailure:
    """The failure record of a model whose scoring raised ``e``."""
    reason = str(e) if isinstance(e, BioimageCteError) else f"{type(e).__name__}: {e}"
    stage = Stage.SKIPPED if isinstance(e, UntrustedCodeError) else Stage.PREDICT
    return ModelFailure(source.name, source.source, stage, one_line(reason), failure_kind(e))
