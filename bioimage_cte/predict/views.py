"""Flipped and rotated views of one image: the geometry, and when a model's preprocessing can be shared by them.

The default estimator (``tta``) predicts every image clean and in three views (flips and quarter turns of the last
two axes, the dihedral group; :func:`dihedral`), maps each prediction back (:func:`map_back`) and scores the
agreement. Through bioimageio.core's pipeline every view is a new sample: padded, its normalisation statistics
computed, normalised, predicted, postprocessed. For most models the preprocessing commutes with the views: it is
pointwise (``ensure_dtype``, ``scale_linear``, ``clip`` at fixed values, ``sigmoid``, ``binarize``, fixed
zero-mean-unit-variance, ``softmax`` over channels) or uses per-image statistics over every transformed axis
(``zero_mean_unit_variance``, ``scale_range``, ``clip`` at percentiles, with ``y`` and ``x`` among their axes and
no batch axis), which a flip or a quarter turn only reorders. Then the image is padded and preprocessed once by
bioimageio.core and each view is taken from that (:func:`processing_reason` says when it is not, and why).

Bit for bit, not only in exact arithmetic: percentiles are order statistics, the same numbers for every view, so
a view of the preprocessed image *is* bioimageio.core's preprocessed view. A mean or a standard deviation is a
sum, which floating point computes in the order of the pixels: a view's differs from the clean image's in the
last bit, and a network carries that to about 3e-5 in its output, enough to move a pixel across the threshold
now and then. So a model whose preprocessing is ``zero_mean_unit_variance`` (alone) gets each view's statistics
recomputed from the view, with bioimageio.core's operations in plain numpy (:func:`zero_mean_unit_variance`,
half a millisecond instead of six); the predictor checks on every image that this gives bioimageio.core's own
result for the clean image, and sends the views through the pipeline when it does not.

:class:`ViewPlan` is what a predictor decides once per model: whether the views share the preprocessing, and
whether they are stacked into one batch (only on a GPU: on the 2-core CPUs measured, one batch of 4 views ran at
0.71x the speed of 4 passes). Nothing here runs a model (:mod:`bioimage_cte.predict.predictor` does) or imports
bioimageio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bioimage_cte.predict.segmentation import Prediction

if TYPE_CHECKING:
    from bioimageio.spec.model import v0_5

__all__ = ["SHARED_VIEWS", "ViewPlan", "dihedral", "map_back", "plan_views", "processing_reason", "sigmoids",
           "undo_dihedral", "uses_dataset_statistics", "view_pad", "view_statistics", "views_batched",
           "zero_mean_unit_variance"]

#: processing that acts on each value alone (``axis``: along which its parameters may vary)
_POINTWISE = ("ensure_dtype", "sigmoid", "scale_linear", "binarize", "fixed_zero_mean_unit_variance", "softmax")
#: processing with per-image statistics over ``axes``
_STATISTICS = ("zero_mean_unit_variance", "scale_range", "clip")
#: the axes the views move
_MOVED = frozenset({"y", "x"})

#: False sends every view through the model's pipeline as an image of its own, as for a model whose preprocessing
#: does not commute (read when a predictor is built; the benchmark and the tests compare the two paths)
SHARED_VIEWS = True

CPU_BATCH_REASON = "CPU: the views run one at a time (one batch of 4 views measured 0.71x the speed of 4 passes)"


def dihedral(image: np.ndarray, k: int, *, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """The k-th of the 8 flips/rotations of the ``axes`` (``y, x``; default the last two; k = 0 is the identity):
    ``k % 4`` quarter turns from ``y`` towards ``x``, then for k >= 4 a flip of ``x``. A numpy view, not a copy."""
    out = np.rot90(image, k % 4, axes=axes)
    return np.flip(out, axis=axes[1]) if k >= 4 else out


def undo_dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`dihedral`."""
    out = np.flip(image, axis=-1) if k >= 4 else image
    return np.rot90(out, -(k % 4), axes=(-2, -1))


def map_back(prediction: Prediction, k: int) -> Prediction:
    """A prediction of view ``k`` in the clean image's frame; its maps are views of the arrays, not copies."""

    def back(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else undo_dihedral(a, k)

    return dataclasses.replace(prediction, foreground=back(prediction.foreground), boundary=back(prediction.boundary),
                               classes=back(prediction.classes))


def view_pad(pad: Sequence[tuple[int, int]], k: int) -> tuple[tuple[int, int], ...]:
    """The padding that :func:`dihedral` ``k`` turns ``pad`` (before, after per axis, the last two ``y, x``) into.

    ``dihedral(pad_centred(image, pad), k)`` equals ``pad_centred(dihedral(image, k), view_pad(pad, k))``.

    Examples
    --------
    >>> view_pad(((1, 2), (3, 4)), 1)  # a quarter turn: y takes x's padding reversed, x takes y's
    ((4, 3), (1, 2))
    >>> view_pad(((1, 2), (3, 4)), 4)  # a flip of x
    ((1, 2), (4, 3))
    """
    *rest, y, x = pad
    for _ in range(k % 4):
        y, x = (x[1], x[0]), y
    if k >= 4:
        x = (x[1], x[0])
    return (*rest, y, x)


def _axes(kwargs: object) -> set[str] | None:
    axes = getattr(kwargs, "axes", None)
    return None if axes is None else {str(a) for a in axes}


def _op_reason(op: object, tensor: str) -> str | None:
    """Why one processing step may not commute with the views, or None when it does."""
    name = str(getattr(op, "id", type(op).__name__))
    kwargs = getattr(op, "kwargs", None)
    axis = getattr(kwargs, "axis", None)
    if axis is not None and str(axis) in _MOVED:
        return f"{name} along axis {axis}"
    if name in _POINTWISE:
        return None
    if name not in _STATISTICS:
        return f"{name} is not known to commute with flips and rotations"
    if name == "clip" and getattr(kwargs, "min_percentile", None) is None \
            and getattr(kwargs, "max_percentile", None) is None:
        return None  # clipped at fixed values
    reference = getattr(kwargs, "reference_tensor", None)
    if reference is not None and str(reference) != tensor:
        return f"{name} uses the statistics of tensor {reference}"
    axes = _axes(kwargs)
    if axes is None or "batch" in axes or "b" in axes:
        return f"{name} uses dataset-wide statistics"
    if not _MOVED <= axes:
        return f"{name} uses statistics over axes {sorted(axes)}, which the views move between"
    return None


def uses_dataset_statistics(descr: v0_5.ModelDescr) -> bool:
    """Whether any of the model's pre- or postprocessing uses statistics over the batch axis or the whole dataset,
    which bioimageio.core updates with every image it sees (so a prediction depends on the images before it)."""
    ops = [*descr.inputs[0].preprocessing, *(op for o in descr.outputs for op in o.postprocessing)]
    return any(_op_reason(op, "") is not None and "dataset-wide" in str(_op_reason(op, "")) for op in ops)


def _is_float32_cast(op: object) -> bool:
    return getattr(op, "id", None) == "ensure_dtype" and str(getattr(op.kwargs, "dtype", "")) == "float32"


def view_statistics(descr: v0_5.ModelDescr) -> tuple[tuple[str, ...], float] | None:
    """The axes and eps of the input's ``zero_mean_unit_variance`` when it is the whole preprocessing (with casts
    to float32), whose statistics each view recomputes; else None."""
    steps = [op for op in descr.inputs[0].preprocessing if not _is_float32_cast(op)]
    if len(steps) != 1 or steps[0].id != "zero_mean_unit_variance" or steps[0].kwargs.axes is None:
        return None
    return tuple(str(a) for a in steps[0].kwargs.axes), float(steps[0].kwargs.eps)


def zero_mean_unit_variance(x: np.ndarray, axes: Sequence[int], eps: float) -> np.ndarray:
    """bioimageio.core's per-image zero-mean-unit-variance of a float32 array, operation for operation (0.11: the
    mean is numpy's ``nanmean`` over ``axes``, the variance the dot product of the centred values over ``axes``
    by ``einsum`` divided by their count, then ``(x - mean) / (sqrt(var) + eps)``, all in float32).

    Examples
    --------
    >>> x = np.array([[[[0.0, 2.0], [4.0, 6.0]]]], dtype=np.float32)
    >>> [round(float(v), 3) for v in zero_mean_unit_variance(x, (2, 3), 1e-6).ravel()]
    [-1.342, -0.447, 0.447, 1.342]
    """
    axes = tuple(a % x.ndim for a in axes)
    mean = np.nanmean(x, axis=axes, keepdims=True)
    centred = np.moveaxis(x - mean, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    letters = "abcdefgh"[:len(axes)]
    var = np.einsum(f"...{letters},...{letters}->...", centred, centred) / int(np.prod([x.shape[a] for a in axes]))
    std = np.expand_dims(np.sqrt(var), axes)
    return (x - mean) / (std + eps)


def processing_reason(descr: v0_5.ModelDescr) -> str | None:
    """Why a model's views cannot share its preprocessing, or None when they can.

    The input's preprocessing must commute with the views (see the module docstring); ``zero_mean_unit_variance``
    only alone (:func:`view_statistics`). The output's postprocessing runs on each view's own output, as in
    bioimageio.core; it must not read the input's statistics (those of the clean image would stand in for the
    view's) or a dataset's (which every call would update).
    """
    pre = descr.inputs[0].preprocessing
    if any(op.id == "zero_mean_unit_variance" for op in pre) and view_statistics(descr) is None:
        return "zero_mean_unit_variance with other preprocessing steps (a view's mean is recomputed only alone)"
    steps: Iterable[tuple[str, object]] = [(str(descr.inputs[0].id), op) for op in pre]
    steps = [*steps, *((str(o.id), op) for o in descr.outputs for op in o.postprocessing)]
    for tensor, op in steps:
        reason = _op_reason(op, tensor)
        if reason is not None:
            return reason
    return None


def sigmoids(descr: v0_5.ModelDescr, tensor: str) -> int | None:
    """How many logistic sigmoids output ``tensor``'s postprocessing is (with casts to float32 around them), or None
    when it is anything else.

    The shared path applies those to the output array itself, with bioimageio.core's own formula
    (``1 / (1 + exp(-x))`` in float32), instead of wrapping each view's output in a sample for the pipeline.
    """
    output = next(o for o in descr.outputs if str(o.id) == tensor)
    n = 0
    for op in output.postprocessing:
        if op.id == "sigmoid":
            n += 1
        elif op.id != "ensure_dtype" or str(op.kwargs.dtype) != "float32":
            return None
    return n


@dataclass(frozen=True)
class ViewPlan:
    """How one model predicts the views of an image, decided once per model.

    Attributes
    ----------
    shared : bool
        The image is padded and preprocessed once and every view is the flipped preprocessed input (bit for bit what
        bioimageio.core computes, up to the last bit of a mean, see the module docstring). False: each view goes
        through the model's bioimageio.core pipeline as an image of its own.
    batched : bool
        The views of one image run as one batch.
    reason : str
        Why (one line).
    """

    shared: bool
    batched: bool
    reason: str


def views_batched(device: str) -> tuple[bool, str]:
    """Whether views are stacked into one batch on ``device``, and why: on a GPU yes, on a CPU no (measured)."""
    if str(device).startswith("cuda"):
        return True, "GPU: the views of an image run as one batch where the model's batch axis allows it"
    return False, CPU_BATCH_REASON


def plan_views(descr: v0_5.ModelDescr, *, devices: Sequence[str], has_adapter: bool) -> ViewPlan:
    """The :class:`ViewPlan` of a model on ``devices`` (the first one runs it); ``has_adapter``: whether its
    pipeline exposes the model adapter the shared path calls."""
    reason = processing_reason(descr) if has_adapter else "its pipeline has no model adapter to call"
    if not SHARED_VIEWS:
        reason = "shared preprocessing is switched off (bioimage_cte.predict.views.SHARED_VIEWS)"
    if reason is not None:
        return ViewPlan(False, False, f"each view through the pipeline: {reason}")
    batched, why = views_batched(devices[0] if devices else "cpu")
    batch = next((a for a in descr.inputs[0].axes if getattr(a, "type", None) == "batch"), None)
    if batched and (batch is None or batch.size is not None):
        batched, why = False, "the model's input takes one image at a time (its batch axis is fixed)"
    return ViewPlan(True, batched, f"preprocessing shared by the views; {why}")
