"""A model's prediction, and turning 2D or 3D probability maps into foreground masks and instance label images.

Every function takes 2D (y, x) or 3D (z, y, x) arrays positionally and its options keyword-only.
Label images are ``int32`` with background 0 and objects numbered consecutively ``1..N``.

Connected components use face connectivity (scipy's default structuring element: 4-connected
pixels in 2D, 6-connected voxels in 3D), so two objects that touch only at a corner or an edge
stay separate; this matches the nuclei pipelines of the CTE companion code, which label
thresholded maps with ``skimage.measure.label`` at connectivity 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.base.lazy import lazy_module
from bioimage_cte.zoo.readout import Readout

ndimage = lazy_module("scipy.ndimage")  # on first use: not needed to refuse bad input
skimage_segmentation = lazy_module("skimage.segmentation")

__all__ = ["Prediction", "binarize", "instances", "label_foreground", "on_grid", "read_out",
           "watershed_from_boundaries"]


@dataclass(frozen=True)
class Prediction:
    """A model's output on one image: foreground probability and, if the model has one, boundary probability.

    Both are float32 arrays of the image's shape, (y, x) or (z, y, x).

    Attributes
    ----------
    foreground : numpy.ndarray
        Foreground probability; for a multi-class model its foreground class, or one minus the background
        class's probability. For a model without a foreground map, its boundary map (see ``scored``).
    boundary : numpy.ndarray, optional
        Boundary probability of a foreground+boundary model (instances by seeded watershed).
    classes : numpy.ndarray, optional
        A multi-class (softmax) model's class probabilities, (C, y, x) or (C, z, y, x); consistency then
        uses the multi-class forms (:mod:`bioimage_cte.cte.consistency`).
    scored : str
        What ``foreground`` holds: ``"foreground"``, or ``"boundary"`` for a boundary-only or affinity
        model (see :mod:`bioimage_cte.zoo.readout`).
    volumetric : bool
        True when a 3D model predicted the (z, y, x) stack as a whole: it is scored over voxels and
        labelled in 3D. False for a 2D model run slice by slice: each slice is scored on its own.
    """

    foreground: np.ndarray
    boundary: np.ndarray | None = None
    classes: np.ndarray | None = None
    scored: str = "foreground"
    volumetric: bool = False


def _as_map(name: str, array: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise InvalidImageError(
            f"{name} must be a 2D (rows, cols) or 3D (planes, rows, cols) probability map, got ndim={arr.ndim} "
            f"with shape {arr.shape}; pass one channel, e.g. prob[0] or np.squeeze(prob)."
        )
    if arr.dtype.kind not in "biuf":
        raise InvalidImageError(f"{name} must hold real numbers, got dtype {arr.dtype}; convert it to float.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidImageError(
            f"{name} (shape {arr.shape}) contains NaN or infinite values; "
            "fix the prediction or replace them, e.g. np.nan_to_num(prob)."
        )
    return arr


def _check_options(threshold: float, min_size: int) -> None:
    if not np.isfinite(threshold):
        raise InvalidImageError(f"threshold must be a finite number, got {threshold!r}; use e.g. 0.5.")
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise InvalidImageError(f"min_size must be an integer >= 0 (pixels), got {min_size!r}.")


def _relabel_sieved(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and renumber the rest ``1..N``."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    # A lookup table renumbers all objects in one pass instead of one mask per object.
    lut = (np.cumsum(keep) * keep).astype(np.int32)
    return lut[labels]


def binarize(prob: npt.ArrayLike, *, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
    """Foreground mask of a 2D or 3D probability map, ``prob > threshold``.

    Parameters
    ----------
    prob : array_like, shape (rows, cols) or (planes, rows, cols)
        Foreground probabilities.
    threshold : float, optional
        Pixels strictly above it are foreground. Default 0.5.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``prob``

    Raises
    ------
    InvalidImageError
        If ``prob`` is not 2D or 3D, not real-valued or not finite, or ``threshold`` is not finite.

    Examples
    --------
    >>> binarize([[0.2, 0.5], [0.7, 1.0]])
    array([[False, False],
           [ True,  True]])
    """
    _check_options(threshold, 0)
    return _as_map("prob", prob) > threshold


def label_foreground(
    prob: npt.ArrayLike, *, threshold: float = 0.5, min_size: int = 0
) -> npt.NDArray[np.int32]:
    """Instance labels as the face-connected components of ``prob > threshold`` (4-connected in 2D, 6 in 3D).

    Parameters
    ----------
    prob : array_like, shape (rows, cols) or (planes, rows, cols)
        Foreground probabilities.
    threshold : float, optional
        Pixels strictly above it are foreground. Default 0.5.
    min_size : int, optional
        Objects with fewer pixels are removed. Default 0 (keep all).

    Returns
    -------
    numpy.ndarray of int32, the shape of ``prob``
        Background 0, objects ``1..N`` in raster order of their first pixel.

    Raises
    ------
    InvalidImageError
        If ``prob`` is not a finite 2D or 3D map, or an option is out of range.

    Examples
    --------
    >>> label_foreground([[0.9, 0.0, 0.9, 0.9], [0.9, 0.0, 0.0, 0.0]], min_size=2)
    array([[1, 0, 2, 2],
           [1, 0, 0, 0]], dtype=int32)
    >>> int(label_foreground(np.eye(3)[None].repeat(2, axis=0)).max())  # diagonal voxels touch by edges only
    3
    """
    _check_options(threshold, min_size)
    labels, _ = ndimage.label(_as_map("prob", prob) > threshold)
    return _relabel_sieved(labels, min_size)


def watershed_from_boundaries(
    foreground: npt.ArrayLike,
    boundary: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    min_size: int = 0,
) -> npt.NDArray[np.int32]:
    """Instance labels from a foreground map and a boundary map by seeded watershed.

    Seeds are the face-connected components of ``(foreground > threshold) & (boundary < threshold)``;
    seeds smaller than ``max(1, min_size // 4)`` pixels are dropped, because a seed is an
    object's interior and is smaller than the object itself. The seeds are grown over
    ``boundary`` (``skimage.segmentation.watershed``) inside ``foreground > threshold``. Finally
    objects smaller than ``min_size`` are removed and the rest renumbered ``1..N``.

    Parameters
    ----------
    foreground : array_like, shape (rows, cols) or (planes, rows, cols)
        Foreground probabilities.
    boundary : array_like, the shape of ``foreground``
        Boundary probabilities, high between touching objects.
    threshold : float, optional
        Threshold for both maps. Default 0.5.
    min_size : int, optional
        Objects with fewer pixels are removed. Default 0 (keep all).

    Returns
    -------
    numpy.ndarray of int32, the shape of ``foreground``

    Raises
    ------
    InvalidImageError
        If a map is not a finite 2D or 3D array, the shapes differ, or an option is out of range.

    Examples
    --------
    >>> fg = [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    >>> bd = [[0.0, 0.0, 0.9, 0.9, 0.0, 0.0]]
    >>> watershed_from_boundaries(fg, bd)
    array([[1, 1, 1, 2, 2, 2]], dtype=int32)
    """
    _check_options(threshold, min_size)
    fg = _as_map("foreground", foreground)
    bd = _as_map("boundary", boundary)
    if fg.shape != bd.shape:
        raise InvalidImageError(
            f"foreground and boundary must have the same shape, got {fg.shape} and {bd.shape}; "
            "pass the two channels of the same prediction."
        )
    mask = fg > threshold
    seeds, n_seeds = ndimage.label(mask & (bd < threshold))
    seeds = _relabel_sieved(seeds, max(1, min_size // 4))
    if n_seeds == 0 or not seeds.any():
        return np.zeros(fg.shape, dtype=np.int32)
    labels = skimage_segmentation.watershed(bd.astype(np.float64, copy=False), seeds, mask=mask)
    return _relabel_sieved(labels, min_size)


def instances(prediction: Prediction, *, threshold: float = 0.5, min_size: int = 16) -> np.ndarray:
    """Instance labels of a prediction: seeded watershed when it has a boundary channel, else components.

    A prediction of a boundary-only model (``scored == "boundary"``) is labelled as the components
    enclosed by its boundaries, the components of ``1 - boundary > threshold``.

    Examples
    --------
    >>> fg = np.zeros((8, 8), np.float32); fg[1:3, 1:3] = fg[5:7, 5:7] = 0.9
    >>> int(instances(Prediction(fg), min_size=1).max())
    2
    >>> walls = np.zeros((5, 7), np.float32); walls[:, 3] = 1.0  # one wall between two cells
    >>> int(instances(Prediction(walls, scored="boundary"), min_size=1).max())
    2
    """
    if prediction.scored == "boundary":  # a boundary map's objects are the regions its boundaries enclose
        return label_foreground(1.0 - np.asarray(prediction.foreground), threshold=threshold, min_size=min_size)
    if prediction.boundary is not None:
        return watershed_from_boundaries(prediction.foreground, prediction.boundary, threshold=threshold,
                                         min_size=min_size)
    return label_foreground(prediction.foreground, threshold=threshold, min_size=min_size)


def read_out(readout: Readout, out: np.ndarray) -> Prediction:
    """The Prediction of an output array with the channel axis first, (C, y, x) or (C, z, y, x)."""
    out = out.astype(np.float32, copy=False)

    def channel(i: int) -> np.ndarray:
        # a copy, so that a one-channel map does not keep a many-channel output (a whole volume each) alive
        return out[i] if len(out) == 1 or readout.multiclass else out[i].copy()

    boundary = channel(readout.boundary) if readout.boundary is not None else None
    if boundary is None and readout.affinities:
        boundary = out[list(readout.affinities)].mean(axis=0)
    if readout.foreground is not None:
        return Prediction(channel(readout.foreground), boundary, out if readout.multiclass else None)
    if readout.multiclass:
        return Prediction(1.0 - out[readout.background or 0], boundary, out)
    if boundary is None:
        raise ValueError(f"readout of {readout.tensor!r} names no channel to score")
    return Prediction(boundary, None, scored="boundary")


def on_grid(prediction: Prediction, shape: tuple[int, ...]) -> Prediction:
    """The prediction resampled (linearly, pixel centres aligned) to the spatial ``shape`` of the labels or image.

    A model whose output has another resolution than its input (an output axis with a ``scale``) is scored for
    consistency on its own grid, but compared with labels, and drawn over the image, on theirs. A prediction
    already of that shape is returned as it is.

    Examples
    --------
    >>> half = Prediction(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    >>> on_grid(half, (4, 4)).foreground.shape
    (4, 4)
    >>> on_grid(half, (2, 2)) is half
    True
    """
    shape = tuple(int(n) for n in shape)
    if prediction.foreground.shape == shape:
        return prediction

    def resample(field: np.ndarray | None, lead: int = 0) -> np.ndarray | None:
        if field is None:
            return None
        spatial = field.shape[lead:]
        zoom = (1.0,) * lead + tuple(n / m for n, m in zip(shape, spatial, strict=True))
        out = ndimage.zoom(field.astype(np.float32, copy=False), zoom, order=1, mode="nearest", grid_mode=True)
        return out.astype(np.float32, copy=False)

    return Prediction(resample(prediction.foreground), resample(prediction.boundary),
                      resample(prediction.classes, lead=1), prediction.scored, prediction.volumetric)
