"""The axes and channels of an image array: what a model is fed.

Images are handed on as float32 arrays with axes ``"yx"`` or ``"zyx"`` (:func:`to_yx`, channels
averaged to grey), or with the channel axis first, ``"cyx"``/``"czyx"``, for models taking several
channels (:func:`to_model_input`, ``--channels`` selecting and ordering them). Intensities are
untouched: normalisation is the model's preprocessing, not ours. A TIFF whose metadata names its
axes (ImageJ, OME) is read with them (:func:`tiff_axes`).

Axis rules when ``axes`` is not given (see :func:`to_yx`):

1. size-1 axes are dropped;
2. 2-D → ``yx``;
3. 3-D whose last axis has 3 or 4 entries and whose first has more than 4 → ``yxc``, an RGB(A)
   image (alpha dropped);
4. 3-D whose first axis has more than 4 entries and is no longer than the others → ``zyx``;
5. anything else is ambiguous and raises :class:`InvalidImageError` asking for ``--axes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bioimage_cte.base.errors import InvalidImageError

__all__ = ["tiff_axes", "to_model_input", "to_yx"]

_AXIS_LETTERS = "zcyx"


def _check_axes(axes: str, label: str) -> None:
    if len(set(axes)) != len(axes) or not set(axes) <= set(_AXIS_LETTERS) or not {"y", "x"} <= set(axes):
        raise InvalidImageError(
            f"invalid axes {axes!r} for {label}: use each of the letters z, c, y, x at most once, "
            "including y and x (e.g. --axes zyx or --axes cyx)"
        )


def _guess_axes(shape: tuple[int, ...], label: str) -> str:
    """Axes letters for the shape left after dropping size-1 axes (see the module rules)."""
    hint = "pass --axes (e.g. --axes zyx for a z-stack, --axes cyx or --axes yxc for channels)"
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        first, last = shape[0], shape[-1]
        if last in (3, 4) and first > 4:
            return "yxc"
        if first > 4 and first <= min(shape[1:]):
            return "zyx"
        raise InvalidImageError(f"cannot tell the axes of {label} with shape {shape}; {hint}")
    raise InvalidImageError(
        f"cannot tell the axes of {label} with {len(shape)} non-singleton dimensions (shape {shape}); {hint}"
    )


def to_yx(data: np.ndarray, *, axes: str | None = None, path: Path | None = None) -> np.ndarray:
    """Bring an image to float32 with axes ``"yx"`` or ``"zyx"``.

    Parameters
    ----------
    data : numpy.ndarray
        The image as read.
    axes : str, optional
        One letter per axis of ``data`` from ``z``, ``c``, ``y``, ``x`` (e.g. ``"cyx"``,
        ``"yxc"``, ``"zyx"``). By default the axes are guessed by the rules in the module
        docstring, and an ambiguous shape raises.
    path : Path, optional
        Only used to name the image in error messages.

    Returns
    -------
    numpy.ndarray
        float32, 2-D ``(y, x)`` or 3-D ``(z, y, x)``; a ``z`` axis of size 1 is dropped.
        A channel axis is averaged to grey, except that when it is the last axis and has 4
        entries it is read as RGBA and alpha is dropped first. Intensities are not rescaled;
        constant images are allowed.

    Raises
    ------
    InvalidImageError
        ``axes`` does not fit the data, the axes cannot be guessed, or the image holds NaN or
        infinite values.

    Examples
    --------
    >>> to_yx(np.ones((1, 8, 9), dtype=np.uint16)).shape
    (8, 9)
    >>> rgb = np.zeros((16, 16, 3), dtype=np.uint8); rgb[..., 0] = 30
    >>> float(to_yx(rgb)[0, 0])
    10.0
    >>> to_yx(np.zeros((2, 8, 8)), axes="zyx").shape
    (2, 8, 8)
    """
    label = f"image {path}" if path is not None else "the image"
    out, axes, rgba = _canonical(data, axes, label)
    if "c" in axes:
        if rgba:
            out = out[:3]
        out = out.mean(axis=0, dtype=np.float32)
    return _finish(out, label)


def _canonical(data: np.ndarray, axes: str | None, label: str) -> tuple[np.ndarray, str, bool]:
    """float32 data in axis order c, z, y, x (those present), its axes, and whether the channels are RGBA."""
    data = np.asarray(data)
    if axes is None:
        data = data.reshape([n for n in data.shape if n != 1])
        axes = _guess_axes(data.shape, label)
    else:
        axes = axes.lower()
        _check_axes(axes, label)
        if len(axes) != data.ndim:
            raise InvalidImageError(
                f"--axes {axes!r} has {len(axes)} letters but {label} has shape {data.shape} "
                f"({data.ndim} dimensions); pass one letter per dimension"
            )
    rgba = axes.endswith("c") and data.shape[-1] == 4
    order = [axes.index(a) for a in "czyx" if a in axes]
    out = np.transpose(data, order).astype(np.float32, copy=False)
    axes = "".join(a for a in "czyx" if a in axes)
    if "z" in axes and out.shape[axes.index("z")] == 1:
        out = np.take(out, 0, axis=axes.index("z"))
        axes = axes.replace("z", "")
    return out, axes, rgba


def _finish(out: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(out).all():
        raise InvalidImageError(
            f"{label} contains NaN or infinite values; "
            "replace them (e.g. with numpy.nan_to_num) and save again"
        )
    return np.ascontiguousarray(out)


def to_model_input(
    data: np.ndarray,
    *,
    axes: str | None = None,
    channels: Sequence[int] | None = None,
    n_channels: int = 1,
    path: Path | None = None,
    model: str = "the model",
) -> np.ndarray:
    """Bring an image to what a model taking ``n_channels`` input channels is fed.

    Parameters
    ----------
    data : numpy.ndarray
        The image as read.
    axes : str, optional
        As :func:`to_yx`.
    channels : sequence of int, optional
        Image channels to use, in this order (``--channels 0,2``). A single-channel model gets the
        first of them; without ``channels`` it gets the image's channels averaged (as :func:`to_yx`).
    n_channels : int
        Input channels of the model.
    path : Path, optional
        Names the image in error messages.
    model : str
        Names the model in error messages.

    Returns
    -------
    numpy.ndarray
        float32: for one channel ``(y, x)`` or ``(z, y, x)``; for more, the channel axis first,
        ``(c, y, x)`` or ``(c, z, y, x)``. An RGBA image's alpha channel is dropped.

    Raises
    ------
    InvalidImageError
        The axes do not fit, a selected channel does not exist, or the image's channel count
        differs from the model's (one line naming the model, what it expects and what the image has).

    Examples
    --------
    >>> rgb = np.zeros((16, 16, 3), dtype=np.uint8); rgb[..., 2] = 9
    >>> to_model_input(rgb, n_channels=3).shape
    (3, 16, 16)
    >>> float(to_model_input(rgb, channels=[2, 0], n_channels=2)[0, 0, 0])
    9.0
    >>> float(to_model_input(rgb, channels=[2])[0, 0])
    9.0
    """
    label = f"image {path}" if path is not None else "the image"
    out, axes, rgba = _canonical(data, axes, label)
    if "c" not in axes:
        out, axes = out[None], "c" + axes
    elif rgba:
        out = out[:3]
    have = out.shape[0]
    if channels is not None:
        channels = list(channels)
        missing = [c for c in channels if not 0 <= c < have]
        if missing:
            raise InvalidImageError(f"{label} has {have} channel{'s' * (have != 1)} (0..{have - 1}) but --channels "
                                    f"asks for {', '.join(map(str, missing))}; pass channel indices below {have}")
        out = out[channels[:1] if n_channels == 1 else channels]
    if n_channels == 1:
        return _finish(out[0] if len(out) == 1 else out.mean(axis=0, dtype=np.float32), label)
    if len(out) != n_channels:
        chosen = f" after --channels {','.join(map(str, channels))}" if channels is not None else ""
        hint = "pick them with --channels (e.g. --channels 0,1)" if len(out) > n_channels else \
            "rank it on images with that many channels (--axes cyx if the channel axis was not recognised)"
        raise InvalidImageError(f"{model}: model expects {n_channels} input channels but {label} has {len(out)}"
                                f"{chosen}; {hint}")
    return _finish(out, label)


def tiff_axes(path: Path) -> str | None:
    """The axes a TIFF's metadata gives (``"zcyx"``, ``"yxc"`` for RGB ...) when they are all z/c/y/x, else None.

    tifffile names unknown axes ``Q``/``I`` (and time ``T``): those files fall back to the shape rules.
    """
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            letters, shape = series.axes.lower().replace("s", "c"), series.shape
    except Exception:  # read_image reports unreadable files in its own words
        return None
    if len(letters) != len(shape) or len(set(letters)) != len(letters) or not set(letters) <= set(_AXIS_LETTERS):
        return None
    # tifffile keeps size-1 axes; so does read_image, so the letters fit the array as read
    return letters
