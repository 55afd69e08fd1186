"""True performance against labels, and agreement between an estimated and a true ranking.

Performance follows the CTE companion code: Dice of the thresholded foreground for semantic
segmentation, and mean average precision over IoU thresholds 0.5:0.95 for instances.
Agreement statistics compare one score per model (higher = better for both).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.optimize import linear_sum_assignment

from bioimage_cte.errors import InvalidImageError

__all__ = [
    "DSB_THRESHOLDS",
    "AgreementStats",
    "average_precision",
    "bootstrap_agreement",
    "dice",
    "foreground_dice",
    "instance_f1",
    "match_instances",
    "mean_average_precision",
    "rank_agreement",
]

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
            f"with shape {arr.shape}; build it with bioimage_cte.segmentation.label_foreground."
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
            rows, cols = linear_sum_assignment(hits.astype(np.float64), maximize=True)
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
        In [0, 1]; 1.0 if both images have no object.

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
        In [0, 1]; 1.0 if both images have no object.

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


@dataclass(frozen=True)
class AgreementStats:
    """Agreement between an estimated and a true ranking of the same models.

    Attributes
    ----------
    n_models : int
        Number of models compared.
    pearson : float
        Pearson r of the raw scores over the models with a finite estimate (``nan`` if fewer than 3).
    spearman, kendall : float
        Spearman rho and Kendall tau-b of the ranks (unscored models ranked last).
    weighted_tau : float
        Weighted Kendall tau with hyperbolic weights, which weigh the top of the ranking most.
    spearman_p, kendall_p : float
        Two-sided permutation-test p-values of ``spearman`` and ``kendall``.
    top1_hit : bool
        Whether the model ranked first by the estimate has the best true score.
    regret : float
        Best true score minus the true score of the model ranked first by the estimate.
    random_regret : float
        Expected regret of a uniformly random pick: best true score minus the mean.
    spearman_ci, kendall_ci : tuple of float or None
        Bootstrap confidence intervals over images from :func:`bootstrap_agreement`; ``None``
        unless attached with ``dataclasses.replace(stats, spearman_ci=..., kendall_ci=...)``.
    """

    n_models: int
    pearson: float
    spearman: float
    kendall: float
    weighted_tau: float
    spearman_p: float
    kendall_p: float
    top1_hit: bool
    regret: float
    random_regret: float
    spearman_ci: tuple[float, float] | None = None
    kendall_ci: tuple[float, float] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: ``nan`` becomes ``None`` and tuples become lists.

        Examples
        --------
        >>> stats = AgreementStats(3, float("nan"), 1.0, 1.0, 1.0, 0.33, 0.33, True, 0.0, 0.5)
        >>> stats.to_json_dict()["pearson"] is None
        True
        """

        def clean(value: Any) -> Any:
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return {key: clean(value) for key, value in asdict(self).items()}


@contextmanager
def _constant_input_is_nan() -> Iterator[None]:
    # A constant estimate (e.g. every model equally consistent) has no correlation; scipy
    # already returns nan for it, and the warning would repeat once per resample.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        with np.errstate(divide="ignore", invalid="ignore"):
            yield


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=axis) * (yc * yc).sum(axis=axis))
    return np.where(denom > 0, (xc * yc).sum(axis=axis) / np.where(denom > 0, denom, 1.0), np.nan)


def _kendall_b_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall tau-b over ``axis`` from all pairwise sign products (fine for tens of models)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    denom = np.sqrt((sx * sx).sum(axis=(-2, -1)) * (sy * sy).sum(axis=(-2, -1)))
    return np.where(denom > 0, (sx * sy).sum(axis=(-2, -1)) / np.where(denom > 0, denom, 1.0), np.nan)


def _check_models(estimated: np.ndarray, true: np.ndarray) -> None:
    if true.ndim != 1 or estimated.ndim == 0 or estimated.shape[0] != true.shape[0]:
        raise InvalidImageError(
            f"estimated and true must cover the same models, got shapes {estimated.shape} and "
            f"{true.shape}; pass one true score per model (1-D)."
        )
    if true.shape[0] < 3:
        raise InvalidImageError(
            f"rank agreement needs at least 3 models, got {true.shape[0]} (true shape {true.shape}); "
            "add models or report the raw scores."
        )
    if not np.isfinite(true).all():
        raise InvalidImageError(f"true must hold finite scores for every model, got {true.tolist()}.")


def _last_for_nan(values: np.ndarray) -> np.ndarray:
    """Replace nan by a value below every finite one, so unscored models rank last."""
    finite = values[np.isfinite(values)]
    low = finite.min() - 1.0 if finite.size else 0.0
    return np.where(np.isnan(values), low, values)


def _permutation_p(
    x: np.ndarray, y: np.ndarray, statistic: Any, observed: float, n: int, rng: np.random.Generator
) -> float:
    if math.isnan(observed):
        return math.nan
    result = stats.permutation_test(
        (x, y),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n,
        alternative="two-sided",
        rng=rng,
    )
    return float(result.pvalue)


def rank_agreement(
    estimated: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    n_permutations: int = 1000,
    rng: np.random.Generator | int | None = None,
) -> AgreementStats:
    """Compare an estimated ranking of models (e.g. CTE) with their true performance.

    A ``nan`` estimate (a model without any valid score) counts as lower than every finite
    estimate, so such models rank last (tied among themselves); Pearson r uses only the
    models with a finite estimate. The top-1 pick is the first maximum of the estimate.
    A constant input gives ``nan`` correlations and p-values.

    Parameters
    ----------
    estimated : array_like of float, shape (n_models,)
        Estimated scores, higher = better; may contain ``nan``.
    true : array_like of float, shape (n_models,)
        True performance, higher = better; finite.
    n_permutations : int, optional
        Resamples of the two-sided "pairings" permutation test (both score vectors are
        permuted, as in the CTE companion code). scipy enumerates all orderings instead when
        ``n_models! ** 2 <= n_permutations`` (up to 4 models at the default). Default 1000.
    rng : numpy.random.Generator or int or None, optional
        Randomness of the permutation tests.

    Returns
    -------
    AgreementStats
        The bootstrap interval fields are ``None``.

    Raises
    ------
    InvalidImageError
        If the shapes differ, there are fewer than 3 models, ``true`` is not finite, or
        ``n_permutations`` < 1.

    Examples
    --------
    >>> s = rank_agreement([0.9, 0.7, float("nan")], [0.8, 0.6, 0.1], rng=0)
    >>> s.spearman, s.kendall, s.top1_hit, s.regret
    (1.0, 1.0, True, 0.0)
    """
    est, tru = np.asarray(estimated, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if est.ndim != 1 or np.isinf(est).any():
        raise InvalidImageError(
            f"estimated must be 1-D (one score per model) with finite or nan scores, got shape "
            f"{est.shape}: {est.tolist()}."
        )
    _check_models(est, tru)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise InvalidImageError(f"n_permutations must be an integer >= 1, got {n_permutations!r}.")
    gen = np.random.default_rng(rng)
    filled = _last_for_nan(est)
    ok = np.isfinite(est)
    pick = int(np.argmax(filled))
    with _constant_input_is_nan():
        pearson = float(stats.pearsonr(est[ok], tru[ok]).statistic) if ok.sum() >= 3 else math.nan
        spearman = float(stats.spearmanr(filled, tru).statistic)
        kendall = float(stats.kendalltau(filled, tru).statistic)
        weighted = float(stats.weightedtau(filled, tru).statistic)
        # Spearman is Pearson on ranks, and permuting values permutes their ranks.
        rx, ry = stats.rankdata(filled), stats.rankdata(tru)
        spearman_p = _permutation_p(rx, ry, _pearson_along, spearman, n_permutations, gen)
        kendall_p = _permutation_p(filled, tru, _kendall_b_along, kendall, n_permutations, gen)
    return AgreementStats(
        n_models=int(tru.size),
        pearson=pearson,
        spearman=spearman,
        kendall=kendall,
        weighted_tau=weighted,
        spearman_p=spearman_p,
        kendall_p=kendall_p,
        top1_hit=bool(tru[pick] == tru.max()),
        regret=float(tru.max() - tru[pick]),
        random_regret=float(tru.max() - tru.mean()),
    )


def bootstrap_agreement(
    per_image_estimates: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    aggregate: Literal["median", "mean"] = "median",
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals of Spearman rho and Kendall tau over the target images.

    Each replicate resamples the image columns with replacement, aggregates every model with
    ``nanmedian``/``nanmean`` (a model with only ``nan`` ranks last, as in
    :func:`rank_agreement`) and correlates the result with ``true``. Replicates with a
    constant estimate have no correlation and are left out of the percentiles.

    Parameters
    ----------
    per_image_estimates : array_like of float, shape (n_models, n_images)
        Per-image scores; ``nan`` marks images with empty foreground.
    true : array_like of float, shape (n_models,)
        True performance, finite.
    n_boot : int, optional
        Bootstrap replicates. Default 200.
    ci : float, optional
        Coverage of the interval, in (0, 1). Default 0.95.
    rng : numpy.random.Generator or int or None, optional
        Randomness of the resampling; the same seed gives identical intervals.
    aggregate : {"median", "mean"}, optional
        Per-model statistic over images. Default "median".

    Returns
    -------
    tuple
        ``((spearman_low, spearman_high), (kendall_low, kendall_high))``; ``nan`` bounds if
        every replicate was constant.

    Raises
    ------
    InvalidImageError
        If the shapes do not fit, there are fewer than 3 models or an option is out of range.

    Examples
    --------
    >>> est = [[0.9, 0.8, 0.9], [0.5, 0.6, 0.4], [0.1, 0.2, float("nan")]]
    >>> bootstrap_agreement(est, [3.0, 2.0, 1.0], n_boot=20, rng=0)
    ((1.0, 1.0), (1.0, 1.0))
    """
    x, tru = np.asarray(per_image_estimates, dtype=np.float64), np.asarray(true, dtype=np.float64)
    _check_bootstrap_options(x, n_boot, ci, aggregate)
    _check_models(x, tru)
    gen = np.random.default_rng(rng)
    columns = gen.integers(0, x.shape[1], size=(n_boot, x.shape[1]))
    reduce = np.nanmedian if aggregate == "median" else np.nanmean
    with warnings.catch_warnings():
        # An all-nan resample of one model is expected (it then ranks last), not an error.
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = reduce(x[:, columns], axis=-1).T  # (n_boot, n_models)
    scores = _last_for_nan(scores.ravel()).reshape(scores.shape)
    targets = np.broadcast_to(tru, scores.shape)
    spearman = _pearson_along(stats.rankdata(scores, axis=-1), stats.rankdata(targets, axis=-1))
    kendall = _kendall_b_along(scores, targets)
    return _percentile_interval(spearman, ci), _percentile_interval(kendall, ci)


def _check_bootstrap_options(x: np.ndarray, n_boot: int, ci: float, aggregate: str) -> None:
    if aggregate not in ("median", "mean"):
        raise InvalidImageError(f"aggregate must be 'median' or 'mean', got {aggregate!r}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise InvalidImageError(f"n_boot must be an integer >= 1, got {n_boot!r}.")
    if not (np.isfinite(ci) and 0.0 < ci < 1.0):
        raise InvalidImageError(f"ci must lie in (0, 1), got {ci!r}; use e.g. 0.95.")
    if x.ndim != 2 or x.shape[1] == 0 or np.isinf(x).any():
        raise InvalidImageError(
            f"per_image_estimates must be (n_models, n_images) with n_images >= 1 and finite or nan "
            f"values, got shape {x.shape}."
        )


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(finite, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return (float(low), float(high))
