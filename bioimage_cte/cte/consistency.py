"""Consistency between a clean and a perturbed prediction of the same image (CTE).

The clean (unperturbed) prediction plays the role of the ground truth, as in the CTE
companion code (Talks & Kreshuk, arXiv 2503.00450). Every score is in [0, 1] and higher
means more consistent. Scores are computed on the union of the two foregrounds only, so
an image where neither prediction has any foreground has no score: the functions return
``nan`` and :func:`aggregate` counts such images in ``n_empty`` instead of averaging them.

Maps may be 2D images or 3D volumes: a 3D model's (z, y, x) prediction is scored over its voxels
as one sample. Multi-class (softmax) predictions, (C, ...) class probabilities with class 0 the
background, have their own forms (:func:`hard_consistency_multiclass`, :func:`soft_consistency_multiclass`)
that equal the binary ones on a two-class prediction ``[1 - p, p]`` at threshold 0.5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.base.lazy import lazy_module

#: The consistency scores: ``hard`` (agreement of thresholded masks), ``soft`` (effective invariance: agreement
#: weighted by confidence), ``instance`` (matched instances).
Consistency = Literal["hard", "soft", "instance"]
CONSISTENCIES: tuple[Consistency, ...] = ("hard", "soft", "instance")

ndimage = lazy_module("scipy.ndimage")  # on first use: not needed to refuse bad input
skimage_metrics = lazy_module("skimage.metrics")

__all__ = [
    "CONSISTENCY_FUNCTIONS",
    "MULTICLASS_CONSISTENCY_FUNCTIONS",
    "Aggregate",
    "aggregate",
    "hard_consistency",
    "hard_consistency_multiclass",
    "instance_consistency",
    "soft_consistency",
    "soft_consistency_multiclass",
]


def _check_threshold(threshold: float) -> None:
    if not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise InvalidImageError(f"threshold must be a number in [0, 1], got {threshold!r}; use e.g. 0.5.")


def _same_shape(clean: npt.ArrayLike, perturbed: npt.ArrayLike, names: tuple[str, str],
                what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(clean), np.asarray(perturbed)
    if a.shape != b.shape or a.ndim == 0:
        raise InvalidImageError(f"{names[0]} and {names[1]} must be arrays of the same shape, got {a.shape} and "
                                f"{b.shape}; {what} with and without perturbation.")
    return a, b


def _probability_pair(
    clean: npt.ArrayLike, perturbed: npt.ArrayLike, *, probabilities: bool
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _same_shape(clean, perturbed, ("clean", "perturbed"),
                       "predict the same image (same crop, same channel)")
    for name, arr in (("clean", a), ("perturbed", b)):
        if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
            raise InvalidImageError(
                f"{name} (shape {arr.shape}, dtype {arr.dtype}) must hold finite real numbers; "
                "replace NaN/inf in the prediction, e.g. with np.nan_to_num."
            )
        if probabilities and arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InvalidImageError(
                f"{name} must hold probabilities in [0, 1], got values in [{arr.min()}, {arr.max()}]; "
                "apply the model's sigmoid/softmax first."
            )
    return a, b


def hard_consistency(clean: npt.ArrayLike, perturbed: npt.ArrayLike, *, threshold: float = 0.5) -> float:
    """Hard CTE: IoU of the thresholded clean and perturbed foregrounds.

    With ``A = clean > threshold`` and ``B = perturbed > threshold`` the score is
    ``|A & B| / |A | B|``, i.e. one minus the Hamming disagreement on the union foreground.

    Parameters
    ----------
    clean, perturbed : array_like
        Foreground probability maps of the same shape (any ndim; a volume is scored over its voxels).
    threshold : float, optional
        Pixels strictly above it are foreground. Default 0.5.

    Returns
    -------
    float
        The IoU of the two masks, in [0, 1]; ``nan`` if neither map has foreground.

    Raises
    ------
    InvalidImageError
        If the shapes differ, a map is not finite, or ``threshold`` is outside [0, 1].

    Examples
    --------
    >>> hard_consistency([0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.7, 0.0])
    0.3333333333333333
    """
    _check_threshold(threshold)
    a, b = _probability_pair(clean, perturbed, probabilities=False)
    fa, fb = a > threshold, b > threshold
    union = np.count_nonzero(fa | fb)
    if union == 0:
        return math.nan
    return float(np.count_nonzero(fa & fb) / union)


def soft_consistency(clean: npt.ArrayLike, perturbed: npt.ArrayLike, *, threshold: float = 0.5) -> float:
    """Soft CTE: pixel-wise Effective Invariance (Deng et al. 2022) on the union foreground.

    Per pixel, with classes ``c = clean > threshold`` and ``d = perturbed > threshold`` and the
    probability of the predicted class ``q = p if class 1 else 1 - p`` for each map,
    ``EI = sqrt(q_clean * q_perturbed)`` where ``c == d`` and 0 elsewhere. The score is the
    mean of EI over the pixels that are foreground in either map.

    Parameters
    ----------
    clean, perturbed : array_like
        Foreground probability maps of the same shape (any ndim), values in [0, 1].
    threshold : float, optional
        Pixels strictly above it are foreground. Default 0.5.

    Returns
    -------
    float
        The mean effective invariance over the union foreground, in [0, 1]; ``nan`` if neither map has
        foreground.

    Raises
    ------
    InvalidImageError
        If the shapes differ, a value is outside [0, 1], or ``threshold`` is outside [0, 1].

    Examples
    --------
    >>> round(soft_consistency([1.0, 0.81, 0.2], [1.0, 1.0, 0.9]), 6)
    0.633333
    """
    _check_threshold(threshold)
    a, b = _probability_pair(clean, perturbed, probabilities=True)
    ca, cb = a > threshold, b > threshold
    union = ca | cb
    if not union.any():
        return math.nan
    pa, pb = a[union].astype(np.float64), b[union].astype(np.float64)
    qa = np.where(ca[union], pa, 1.0 - pa)
    qb = np.where(cb[union], pb, 1.0 - pb)
    ei = np.where(ca[union] == cb[union], np.sqrt(qa * qb), 0.0)
    return float(ei.mean())


def _class_pair(
    clean: npt.ArrayLike, perturbed: npt.ArrayLike, *, background: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (C, ...) class probabilities, their argmax labels and the union-foreground mask as (p, q, mask)."""
    a, b = _probability_pair(clean, perturbed, probabilities=True)
    if a.ndim < 2 or a.shape[0] < 2:
        raise InvalidImageError(
            f"class probabilities must have shape (classes, ...) with at least 2 classes, got {a.shape}; pass the "
            "softmax output with its channel axis first."
        )
    if background is not None and not (isinstance(background, int | np.integer) and 0 <= background < a.shape[0]):
        raise InvalidImageError(f"background must be a class index in [0, {a.shape[0] - 1}] or None, "
                                f"got {background!r}.")
    # argmax takes the first of tied classes, as "p > 0.5" calls p = 0.5 background in the binary forms.
    la, lb = a.argmax(axis=0), b.argmax(axis=0)
    mask = np.ones(la.shape, bool) if background is None else (la != background) | (lb != background)
    return a, b, np.stack([la, lb, mask])


def hard_consistency_multiclass(clean: npt.ArrayLike, perturbed: npt.ArrayLike, *,
                                background: int | None = 0) -> float:
    """Hard CTE of a multi-class prediction: agreement of the argmax labels on the union foreground.

    With ``a`` and ``b`` the argmax classes of the clean and perturbed predictions, the score is the
    share of pixels with ``a == b`` among those where ``a`` or ``b`` is not the background class. On
    two classes ``[1 - p, p]`` it equals :func:`hard_consistency` of ``p`` at threshold 0.5 (the IoU).

    Parameters
    ----------
    clean, perturbed : array_like, shape (C, ...)
        Class probabilities (softmax output, classes first) of the same shape, values in [0, 1].
    background : int or None, optional
        Index of the background class, left out where both predictions call it; None scores every
        pixel (a model without a background class). Default 0.

    Returns
    -------
    float
        The agreement in [0, 1]; ``nan`` if neither prediction has a non-background pixel.

    Raises
    ------
    InvalidImageError
        If the shapes differ, there are fewer than 2 classes, a value is outside [0, 1], or
        ``background`` is not a class index.

    Examples
    --------
    >>> clean = [[0.8, 0.1, 0.1, 0.2], [0.1, 0.8, 0.1, 0.2], [0.1, 0.1, 0.8, 0.6]]  # classes 0, 1, 2, 2
    >>> perturbed = [[0.8, 0.1, 0.2, 0.9], [0.1, 0.2, 0.7, 0.0], [0.1, 0.7, 0.1, 0.1]]  # 0, 2, 1, 0
    >>> hard_consistency_multiclass(clean, perturbed)  # 3 foreground pixels, none agree
    0.0
    >>> hard_consistency_multiclass(clean, clean)
    1.0
    """
    _, _, stacked = _class_pair(clean, perturbed, background=background)
    la, lb, mask = stacked[0], stacked[1], stacked[2].astype(bool)
    if not mask.any():
        return math.nan
    return float(np.count_nonzero(la[mask] == lb[mask]) / np.count_nonzero(mask))


def soft_consistency_multiclass(clean: npt.ArrayLike, perturbed: npt.ArrayLike, *,
                                background: int | None = 0) -> float:
    """Soft CTE of a multi-class prediction: Effective Invariance (Deng et al. 2022) on the union foreground.

    Per pixel, with ``a`` and ``b`` the argmax classes and ``q`` each prediction's probability of its
    own argmax class, ``EI = sqrt(q_clean * q_perturbed)`` where ``a == b`` and 0 elsewhere; the score
    is the mean EI over the pixels where ``a`` or ``b`` is not the background class. This is Deng et
    al.'s multi-class definition, of which :func:`soft_consistency` is the two-class case: on
    ``[1 - p, p]`` the two are equal at threshold 0.5.

    Parameters
    ----------
    clean, perturbed : array_like, shape (C, ...)
        Class probabilities (softmax output, classes first) of the same shape, values in [0, 1].
    background : int or None, optional
        Index of the background class; None scores every pixel. Default 0.

    Returns
    -------
    float
        The mean effective invariance in [0, 1]; ``nan`` if neither prediction has a non-background pixel.

    Raises
    ------
    InvalidImageError
        As :func:`hard_consistency_multiclass`.

    Examples
    --------
    >>> clean = [[0.1, 0.2], [0.9, 0.0], [0.0, 0.8]]         # classes 1, 2
    >>> perturbed = [[0.1, 0.2], [0.4, 0.0], [0.5, 0.8]]     # classes 2, 2
    >>> round(soft_consistency_multiclass(clean, perturbed), 6)  # (0 + sqrt(0.8 * 0.8)) / 2
    0.4
    """
    a, b, stacked = _class_pair(clean, perturbed, background=background)
    la, lb, mask = stacked[0], stacked[1], stacked[2].astype(bool)
    if not mask.any():
        return math.nan
    qa = a.max(axis=0)[mask].astype(np.float64)
    qb = b.max(axis=0)[mask].astype(np.float64)
    ei = np.where(la[mask] == lb[mask], np.sqrt(qa * qb), 0.0)
    return float(ei.mean())


def disagreement_map(clean: npt.ArrayLike, perturbed: npt.ArrayLike, *, kind: str = "soft",
                     threshold: float = 0.5) -> np.ndarray:
    """Per-pixel disagreement between a clean and a perturbed foreground map: what a consistency score averages.

    ``soft``: ``1 - EI`` (see :func:`soft_consistency`) on the union foreground, so its mean over the union
    foreground is ``1 - soft_consistency``. ``hard`` and ``instance``: 1 where the two masks differ. Pixels that
    are background in both maps are 0: they do not count in the score either.

    Examples
    --------
    >>> [round(float(v), 2) for v in disagreement_map([1.0, 0.81, 0.2, 0.0], [1.0, 1.0, 0.9, 0.0])]
    [0.0, 0.1, 1.0, 0.0]
    """
    _check_threshold(threshold)
    a, b = _probability_pair(clean, perturbed, probabilities=True)
    ca, cb = a > threshold, b > threshold
    if kind != "soft":
        return (ca != cb).astype(np.float32)
    qa = np.where(ca, a, 1.0 - a).astype(np.float64)
    qb = np.where(cb, b, 1.0 - b).astype(np.float64)
    ei = np.where(ca == cb, np.sqrt(qa * qb), 0.0)
    return np.where(ca | cb, 1.0 - ei, 0.0).astype(np.float32)


def _label_pair(
    clean_labels: npt.ArrayLike, perturbed_labels: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _same_shape(clean_labels, perturbed_labels, ("clean_labels", "perturbed_labels"),
                       "segment the same image")
    for name, arr in (("clean_labels", a), ("perturbed_labels", b)):
        if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0):
            raise InvalidImageError(
                f"{name} must be a non-negative integer label image (0 = background), got dtype "
                f"{arr.dtype}; build it with bioimage_cte.predict.segmentation.label_foreground."
            )
    return a.astype(np.int64), b.astype(np.int64)


def _ids_with_singleton_background(labels: np.ndarray) -> np.ndarray:
    """Give each background pixel its own id above all object ids, so that no 0 remains."""
    out = labels.copy()
    background = out == 0
    start = int(out.max(initial=0)) + 1
    out[background] = np.arange(start, start + np.count_nonzero(background))
    return out


def instance_consistency(
    clean_labels: npt.ArrayLike, perturbed_labels: npt.ArrayLike, *, border_width: int = 1
) -> float:
    """Instance CTE: one minus the adapted Rand error between two label images.

    The clean segmentation is the reference. The score is computed on the pixels that are
    foreground (label > 0) in either image, minus a band of about ``border_width`` pixels
    around the boundaries of the clean instances: pixels where the grey dilation of the
    clean labels differs from their grey erosion, both with a diamond (city-block) footprint of
    radius ``border_width``. Boundaries between touching instances are in the band too. Inside
    the mask every background pixel is its own singleton segment, so foreground/background
    disagreement counts as error. Label values themselves do not matter (permutation invariant).

    Parameters
    ----------
    clean_labels, perturbed_labels : array_like of int
        Non-negative instance label images of the same shape (any ndim: label a 3D model's volume in
        3D, see :func:`bioimage_cte.predict.segmentation.label_foreground`), 0 = background.
    border_width : int, optional
        Half-width of the ignored band; 0 ignores nothing. Default 1.

    Returns
    -------
    float
        The adapted Rand F-score in [0, 1]; ``nan`` if the mask is empty.

    Raises
    ------
    InvalidImageError
        If the shapes differ, the labels are not non-negative integers, or ``border_width`` < 0.

    Examples
    --------
    >>> clean = [[1, 1, 1, 1, 2, 2]]
    >>> instance_consistency(clean, [[5, 5, 5, 5, 5, 5]], border_width=0)  # 2 * 7 / (7 + 15)
    0.6363636363636364
    >>> instance_consistency(clean, [[2, 2, 2, 2, 1, 1]], border_width=0)
    1.0
    """
    if isinstance(border_width, bool) or not isinstance(border_width, int | np.integer) or border_width < 0:
        raise InvalidImageError(f"border_width must be an integer >= 0 (pixels), got {border_width!r}.")
    a, b = _label_pair(clean_labels, perturbed_labels)
    mask = (a > 0) | (b > 0)
    if border_width > 0:
        footprint = ndimage.iterate_structure(ndimage.generate_binary_structure(a.ndim, 1), border_width)
        band = ndimage.grey_dilation(a, footprint=footprint) != ndimage.grey_erosion(a, footprint=footprint)
        mask &= ~band
    if not mask.any():
        return math.nan
    ta = _ids_with_singleton_background(a[mask])
    tb = _ids_with_singleton_background(b[mask])
    # With only singleton segments there are no pixel pairs and skimage divides 0 by 0;
    # two all-singleton partitions of the same pixels are identical, hence 1.0.
    with np.errstate(divide="ignore", invalid="ignore"):
        error, _, _ = skimage_metrics.adapted_rand_error(ta, tb, ignore_labels=())
    return 1.0 if np.isnan(error) else float(1.0 - error)


@dataclass(frozen=True)
class Aggregate:
    """One model's consistency over a set of images.

    Attributes
    ----------
    score : float
        Median or mean of the valid per-image values; ``nan`` if there is none.
    n_images : int
        Number of per-image values given.
    n_valid : int
        Images with a score (non-empty union foreground).
    n_empty : int
        Images without a score (``nan``: neither prediction had foreground).
    mean, std : float
        Mean and population standard deviation (ddof=0) of the valid values; ``nan`` if none.
    """

    score: float
    n_images: int
    n_valid: int
    n_empty: int
    mean: float
    std: float


def aggregate(values: Sequence[float], *, how: Literal["median", "mean"] = "median") -> Aggregate:
    """Summarise per-image consistency values into one score, counting empty images.

    ``nan`` values mark images whose union foreground was empty. They are left out of
    every statistic and counted in ``n_empty``. If no value is valid, ``score`` is ``nan``.

    Parameters
    ----------
    values : sequence of float
        Per-image scores in [0, 1] or ``nan``.
    how : {"median", "mean"}, optional
        Statistic used for ``score``. Default "median", as in the CTE analysis notebooks.

    Returns
    -------
    Aggregate

    Raises
    ------
    InvalidImageError
        If ``how`` is unknown, ``values`` is empty or not 1-D, or holds an infinite value.

    Examples
    --------
    >>> aggregate([1.0, float("nan"), 0.5, 0.0])
    Aggregate(score=0.5, n_images=4, n_valid=3, n_empty=1, mean=0.5, std=0.408248290463863)
    """
    if how not in ("median", "mean"):
        raise InvalidImageError(f"how must be 'median' or 'mean', got {how!r}.")
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidImageError(
            f"values must be a non-empty 1-D sequence of per-image scores, got shape {arr.shape}; "
            "score at least one image."
        )
    if np.isinf(arr).any():
        raise InvalidImageError(
            f"values holds an infinite score ({arr.tolist()}); consistency scores are in [0, 1] or nan."
        )
    valid = arr[~np.isnan(arr)]
    if valid.size == 0:
        return Aggregate(math.nan, arr.size, 0, arr.size, math.nan, math.nan)
    score = np.median(valid) if how == "median" else valid.mean()
    return Aggregate(
        score=float(score),
        n_images=int(arr.size),
        n_valid=int(valid.size),
        n_empty=int(arr.size - valid.size),
        mean=float(valid.mean()),
        std=float(valid.std()),
    )


CONSISTENCY_FUNCTIONS: dict[str, Callable[..., float]] = {
    "hard": hard_consistency,
    "soft": soft_consistency,
}
"""Semantic consistency functions by name; each is ``f(clean, perturbed, *, threshold) -> float``.

:func:`instance_consistency` is not listed because it takes label images, not probabilities.
"""

MULTICLASS_CONSISTENCY_FUNCTIONS: dict[str, Callable[..., float]] = {
    "hard": hard_consistency_multiclass,
    "soft": soft_consistency_multiclass,
}
"""Multi-class forms of :data:`CONSISTENCY_FUNCTIONS`; each is ``f(clean, perturbed, *, background) -> float``."""


def bootstrap_intervals(
    per_image: Sequence[Sequence[float | None]],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int | np.random.SeedSequence = 0,
) -> np.ndarray:
    """Bootstrap intervals of each model's median score over images.

    Each model's per-image scores are resampled with replacement and the ``nanmedian`` of each
    resample is taken (images without foreground are ``nan`` and ignored, as in the ranking).

    Parameters
    ----------
    per_image : sequence of sequences
        ``per_image[m][i]``: model m's score on image i (``None`` or ``nan`` when missing).
    n_boot : int
        Number of resamples.
    level : float
        Coverage of the interval.
    seed : int or numpy.random.SeedSequence
        Seed of the resampling.

    Returns
    -------
    numpy.ndarray
        Shape (n_models, 2): lower and upper bound; ``nan`` for a model without any score.

    Examples
    --------
    >>> bootstrap_intervals([[0.5, 0.5, 0.5], [None, None]]).tolist()[0]
    [0.5, 0.5]
    """
    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2 * 100
    out = np.full((len(per_image), 2), np.nan)
    for m, values in enumerate(per_image):
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        if arr.size == 0 or np.isnan(arr).all():
            continue
        samples = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # resamples of only empty images: nan, then skipped
            medians = np.nanmedian(samples, axis=1)
        out[m] = np.nanpercentile(medians, [tail, 100 - tail])
    return out
