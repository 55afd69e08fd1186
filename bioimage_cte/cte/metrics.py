"""True performance against labels: foreground Dice, instance F1 and mean average precision.

Performance follows the CTE companion code: Dice of the thresholded foreground for semantic
segmentation, and mean average precision over IoU thresholds 0.5:0.95 for instances.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.base.lazy import lazy_module

optimize = lazy_module("scipy.optimize")  # on first use: not needed to refuse bad input

__all__ = [
    "DSB_THRESHOLDS",
    "METRICS",
    "average_precision",
    "dice",
    "foreground_dice",
    "instance_f1",
    "match_instances",
    "mean_average_precision",
]

#: True-performance metrics: foreground Dice, instance F1 at IoU 0.5, mean AP over IoU 0.5:0.05:0.95.
METRICS = ("dice", "f1", "map")

DSB_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
"""IoU thresholds 0.5:0.05:0.95 of the DSB2018 challenge and of the CTE instance evaluation."""


def _same_shape(names: tuple[str, str], a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InvalidImageError(
            f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}; "
            "compare a prediction with the labels of the same image."
        )


def _as_labels(name: str, labels: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0):
        raise InvalidImageError(
            f"{name} must be a non-negative integer label image (0 = background), got dtype {arr.dtype} "
            f"with shape {arr.shape}; build it with bioimage_cte.predict.segmentation.label_foreground."
        )
    return arr


def dice(pred_mask: npt.ArrayLike, true_mask: npt.ArrayLike) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of two boolean masks.

    Two empty masks agree perfectly, so the Dice of two empty masks is 1.0.

    Parameters
    ----------
    pred_mask, true_mask : array_like of bool
        Masks of the same shape.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    InvalidImageError
        If the shapes differ or a mask is not boolean.

    Examples
    --------
    >>> dice([True, True, False, False], [True, False, True, False])
    0.5
    """
    p, t = np.asarray(pred_mask), np.asarray(true_mask)
    for name, arr in (("pred_mask", p), ("true_mask", t)):
        if arr.dtype != np.bool_:
            raise InvalidImageError(
                f"{name} must be a boolean mask, got dtype {arr.dtype}; threshold it first, e.g. prob > 0.5."
            )
    _same_shape(("pred_mask", "true_mask"), p, t)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(p & t) / total)


def foreground_dice(prob: npt.ArrayLike, true_labels: npt.ArrayLike, *, threshold: float = 0.5) -> float:
    """Dice of ``prob > threshold`` against the foreground ``true_labels > 0``.

    Parameters
    ----------
    prob : array_like
        Foreground probabilities.
    true_labels : array_like of int
        Label image (semantic or instance) of the same shape; 0 = background.
    threshold : float, optional
        Pixels strictly above it are predicted foreground. Default 0.5.

    Returns
    -------
    float
        In [0, 1]; 1.0 if both foregrounds are empty.

    Raises
    ------
    InvalidImageError
        If the shapes differ, the labels are not non-negative integers or ``threshold`` is not finite.

    Examples
    --------
    >>> foreground_dice([0.9, 0.6, 0.2, 0.1], [3, 0, 3, 0])
    0.5
    """
    if not np.isfinite(threshold):
        raise InvalidImageError(f"threshold must be a finite number, got {threshold!r}; use e.g. 0.5.")
    p, t = np.asarray(prob), _as_labels("true_labels", true_labels)
    _same_shape(("prob", "true_labels"), p, t)
    if p.dtype.kind not in "biuf":
        raise InvalidImageError(f"prob must hold real numbers, got dtype {p.dtype}; convert it to float.")
    return dice(p > threshold, t > 0)


def match_instances(pred_labels: npt.ArrayLike, true_labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU between every true and every predicted instance, from one contingency table.

    Parameters
    ----------
    pred_labels, true_labels : array_like of int
        Non-negative instance label images of the same shape; 0 = background. Label values
        need not be consecutive.

    Returns
    -------
    numpy.ndarray of float64, shape (n_true, n_pred)
        Row ``i`` is the ``i``-th smallest positive true label, column ``j`` the ``j``-th
        smallest positive predicted label.

    Raises
    ------
    InvalidImageError
        If the shapes differ or the labels are not non-negative integers.

    Examples
    --------
    >>> match_instances([[1, 1, 0, 2]], [[7, 7, 7, 0]])
    array([[0.66666667, 0.        ]])
    """
    p, t = _as_labels("pred_labels", pred_labels), _as_labels("true_labels", true_labels)
    _same_shape(("pred_labels", "true_labels"), p, t)
    # Index 0 is kept for the background so that object areas include their background overlap.
    t_ids, t_idx = np.unique(np.concatenate([[0], t.ravel()]), return_inverse=True)
    p_ids, p_idx = np.unique(np.concatenate([[0], p.ravel()]), return_inverse=True)
    n_t, n_p = t_ids.size, p_ids.size
    table = np.bincount(t_idx[1:] * n_p + p_idx[1:], minlength=n_t * n_p).reshape(n_t, n_p)
    inter = table[1:, 1:].astype(np.float64)
    union = table[1:, :].sum(axis=1)[:, None] + table[:, 1:].sum(axis=0)[None, :] - inter
    return inter / np.maximum(union, 1)


def _matched_counts(
    pred_labels: npt.ArrayLike, true_labels: npt.ArrayLike, thresholds: tuple[float, ...]
) -> tuple[np.ndarray, int, int]:
    """True positives per threshold (one-to-one, IoU strictly above), and the object counts."""
    for thr in thresholds:
        if not (np.isfinite(thr) and 0.0 <= thr < 1.0):
            raise InvalidImageError(f"IoU thresholds must lie in [0, 1), got {thr!r}; use e.g. 0.5.")
    iou = match_instances(pred_labels, true_labels)
    n_true, n_pred = iou.shape
    tp = np.zeros(len(thresholds), dtype=np.int64)
    for k, thr in enumerate(thresholds):
        hits = iou > thr
        if thr >= 0.5 or not hits.any():
            # Above IoU 0.5 each object overlaps at most one other by more than half, so the hits
            # already form a one-to-one matching.
            tp[k] = np.count_nonzero(hits)
        else:
            rows, cols = optimize.linear_sum_assignment(hits.astype(np.float64), maximize=True)
            tp[k] = np.count_nonzero(hits[rows, cols])
    return tp, n_true, n_pred


def instance_f1(
    pred_labels: npt.ArrayLike, true_labels: npt.ArrayLike, *, iou_threshold: float = 0.5
) -> float:
    """Object-level F1 ``2TP / (2TP + FP + FN)`` after one-to-one matching at IoU > ``iou_threshold``.

    Below IoU 0.5 objects can have several candidate partners, so the matching is the
    maximum one-to-one matching (``scipy.optimize.linear_sum_assignment``).

    Parameters
    ----------
    pred_labels, true_labels : array_like of int
        Instance label images of the same shape; 0 = background.
    iou_threshold : float, optional
        A pair matches if its IoU is strictly above it; in [0, 1). Default 0.5.

    Returns
    -------
    float
        The F1 score, in [0, 1]; 1.0 if both images have no object.

    Raises
    ------
    InvalidImageError
        If the shapes differ, the labels are invalid or ``iou_threshold`` is outside [0, 1).

    Examples
    --------
    >>> instance_f1([[1, 1, 0, 0, 0]], [[1, 1, 0, 2, 2]])  # one hit, one missed: 2 / (2 + 0 + 1)
    0.6666666666666666
    """
    tp, n_true, n_pred = _matched_counts(pred_labels, true_labels, (iou_threshold,))
    if n_true + n_pred == 0:
        return 1.0
    return float(2 * tp[0] / (n_true + n_pred))


def average_precision(
    pred_labels: npt.ArrayLike, true_labels: npt.ArrayLike, *, iou_threshold: float
) -> float:
    """Average precision at one IoU threshold, ``TP / (TP + FP + FN)``.

    This is the DSB2018 challenge definition (stardist calls it "accuracy"), not the area
    under a precision-recall curve: a pair matches if its IoU is strictly above
    ``iou_threshold``, matching is one-to-one, FP are unmatched predictions and FN unmatched
    true objects.

    Parameters
    ----------
    pred_labels, true_labels : array_like of int
        Instance label images of the same shape; 0 = background.
    iou_threshold : float
        In [0, 1).

    Returns
    -------
    float
        ``TP / (TP + FP + FN)``, in [0, 1]; 1.0 if both images have no object.

    Raises
    ------
    InvalidImageError
        If the shapes differ, the labels are invalid or ``iou_threshold`` is outside [0, 1).

    Examples
    --------
    >>> average_precision([[1, 1, 0, 0, 3]], [[1, 1, 0, 2, 2]], iou_threshold=0.5)  # 1 / (1 + 1 + 1)
    0.3333333333333333
    """
    tp, n_true, n_pred = _matched_counts(pred_labels, true_labels, (iou_threshold,))
    denominator = n_true + n_pred - tp[0]
    return 1.0 if denominator == 0 else float(tp[0] / denominator)


def mean_average_precision(
    pred_labels: npt.ArrayLike,
    true_labels: npt.ArrayLike,
    *,
    thresholds: tuple[float, ...] = DSB_THRESHOLDS,
) -> float:
    """Mean of :func:`average_precision` over IoU thresholds (default 0.5, 0.55, ..., 0.95).

    Parameters
    ----------
    pred_labels, true_labels : array_like of int
        Instance label images of the same shape; 0 = background.
    thresholds : tuple of float, optional
        IoU thresholds in [0, 1). Default :data:`DSB_THRESHOLDS`.

    Returns
    -------
    float
        In [0, 1]; 1.0 if both images have no object.

    Raises
    ------
    InvalidImageError
        If the shapes differ, the labels are invalid, or ``thresholds`` is empty or out of range.

    Examples
    --------
    >>> true = np.zeros((10, 10), dtype=int); true[:, :5] = 1
    >>> pred = np.zeros((10, 10), dtype=int); pred[:, 1:6] = 1
    >>> mean_average_precision(pred, true)  # IoU 40/60 = 0.667 passes 0.5, 0.55, 0.6, 0.65
    0.4
    """
    thr = tuple(float(t) for t in thresholds)
    if not thr:
        raise InvalidImageError("thresholds must hold at least one IoU threshold; use e.g. DSB_THRESHOLDS.")
    tp, n_true, n_pred = _matched_counts(pred_labels, true_labels, thr)
    if n_true + n_pred == 0:
        return 1.0
    return float(np.mean(tp / (n_true + n_pred - tp)))
