"""Reading target images (and their labels) from folders, globs and files.

Supported files are ``.tif``/``.tiff`` (tifffile), ``.png`` (imageio) and ``.npy``
(numpy, without pickle); suffixes are matched case-insensitively. Images are handed on as
float32 arrays with axes ``"yx"`` or ``"zyx"``, channel axis first for models taking several
channels; the axis rules and channel selection are in :mod:`bioimage_cte.predict.image_axes`.
"""

from __future__ import annotations

import glob
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.predict.image_axes import tiff_axes, to_model_input, to_yx

__all__ = [
    "dataset_fingerprint",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageCache",
    "ImageCheck",
    "check_images",
    "load_target",
    "target_task",
    "list_images",
    "load_labels",
    "read_image",
    "tiff_axes",
    "to_model_input",
    "to_yx",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".npy")
"""File suffixes read as images (compared case-insensitively)."""

DEFAULT_MAX_PIXELS: int = 2**30
"""Most pixel values (all planes and channels) of an image read by default, checked from its header before any
pixel is decoded: 2**30, e.g. 32768 x 32768 px, 2 GiB as uint16 (``--max-pixels``)."""

DEFAULT_CACHE_BYTES: int = 512 * 2**20
"""Decoded pixels an :class:`ImageCache` holds for one ranking: 512 MiB (the demo targets take 0.5-2 MiB)."""

_GLOB_CHARS = "*?["
_ACCEPTED = "expected .tif, .tiff, .png or .npy files; pass a folder, a glob such as 'data/*.tif', or a file"


def _is_image_file(path: Path) -> bool:
    # dot files are skipped: macOS leaves "._name.tif" resource forks next to real images
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(spec: str | Path) -> list[Path]:
    """List the image files a folder, glob pattern or single file refers to.

    Parameters
    ----------
    spec : str or Path
        A folder (its direct .tif/.tiff/.png/.npy files, not recursive), a glob pattern
        (containing ``*``, ``?`` or ``[``) or one image file. An existing path is never
        treated as a pattern.

    Returns
    -------
    list of Path
        Sorted by path.

    Raises
    ------
    InvalidImageError
        Nothing matches, or the single file has an unsupported suffix.

    Examples
    --------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> for n in ("b.tif", "a.npy", "notes.txt"):
    ...     _ = (tmp / n).write_bytes(b"")
    >>> [p.name for p in list_images(tmp)]
    ['a.npy', 'b.tif']
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if _is_image_file(p))
        if not found:
            raise InvalidImageError(f"no images found in {path}: {_ACCEPTED}")
        return found
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidImageError(f"cannot read {path} as an image (unsupported suffix): {_ACCEPTED}")
        return [path]
    if any(c in text for c in _GLOB_CHARS):
        found = sorted(p for p in map(Path, glob.glob(str(path))) if _is_image_file(p))
        if not found:
            raise InvalidImageError(f"no images match the pattern {text}: {_ACCEPTED}")
        return found
    raise InvalidImageError(f"image path {text} does not exist: {_ACCEPTED}")


def _reason(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _unreadable(path: Path, e: BaseException) -> InvalidImageError:
    return InvalidImageError(
        f"cannot read image {path} ({_reason(e)}); check that the file is a complete, uncorrupted image"
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# samples per pixel by PNG colour type; a palette is counted as RGBA, which is what it may decode to
_PNG_SAMPLES = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}


def _png_header(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(shape, bytes per sample) from a PNG's IHDR (and acTL, for the frames of an animated PNG).

    Reads chunk headers only, up to the first image data. None when the file is no PNG: then
    the decoder gets it and reports what it is.
    """
    with path.open("rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        length, kind = struct.unpack(">I4s", f.read(8))
        if kind != b"IHDR" or length < 13:
            raise ValueError("the PNG's first chunk is not a valid IHDR header")
        width, height, depth, colour = struct.unpack(">IIBB", f.read(10))
        f.seek(length - 10 + 4, 1)  # rest of IHDR and its CRC
        frames = 1
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                break
            if kind == b"acTL":
                frames = max(1, struct.unpack(">I", f.read(4))[0])
                length -= 4
            f.seek(length + 4, 1)
    shape = (height, width, _PNG_SAMPLES.get(colour, 4))
    return (frames, *shape) if frames > 1 else shape, 2 if depth == 16 else 1


def _npy_header(path: Path) -> tuple[tuple[int, ...], int]:
    from numpy.lib import format as npy

    with path.open("rb") as f:
        version = npy.read_magic(f)
        # version 3.0 differs from 2.0 only in allowing UTF-8 in the header, which a numeric image's has none of
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), dtype.itemsize


def _tiff_header(path: Path) -> tuple[tuple[int, ...], int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:  # parses the tags only; no strip or tile is read
        series = tif.series[0]
        return tuple(series.shape), np.dtype(series.dtype).itemsize


def _decoded_size(path: Path, suffix: str) -> tuple[int, int, tuple[int, ...]] | None:
    """(pixel values, bytes, shape) the decoder would produce, from the file's header alone; None when unknown."""
    if suffix == ".png":
        header = _png_header(path)
    elif suffix == ".npy":
        header = _npy_header(path)
    else:
        header = _tiff_header(path)
    if header is None:
        return None
    shape, itemsize = header
    n = int(np.prod(shape, dtype=object))
    return n, n * itemsize, shape


def _human(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def read_image(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as stored, without normalising or reordering axes.

    Parameters
    ----------
    path : Path
        A .tif/.tiff (tifffile, first series), .png (imageio) or .npy file (loaded
        without pickle).
    max_pixels : int or None, optional
        Most pixel values allowed (every plane and channel counted; default 2**30). The file's
        header is read first and a larger image is refused before any pixel is decoded, so a small
        compressed file declaring a huge image cannot exhaust memory. None: no limit.

    Returns
    -------
    numpy.ndarray
        The stored array, of a boolean, integer or real dtype.

    Raises
    ------
    InvalidImageError
        The file cannot be read, has more than ``max_pixels`` pixel values, has an unsupported
        suffix or dtype, or is empty.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.npy"
    >>> np.save(p, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_image(p).shape
    (2, 3)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InvalidImageError(f"cannot read {path} as an image (unsupported suffix): {_ACCEPTED}")
    try:
        if path.stat().st_size == 0:  # the readers' own message ("not a TIFF file: header=b''") hides this
            raise InvalidImageError(f"image {path} is an empty file (0 bytes); remove it or export it again")
    except OSError:
        pass  # a missing or unreadable file is reported by the reader below
    if max_pixels is not None:
        try:
            decoded = _decoded_size(path, suffix)
        except Exception as e:  # a header the readers cannot parse either: damaged or not an image
            raise _unreadable(path, e) from e
        if decoded is not None and decoded[0] > max_pixels:
            n, size, shape = decoded
            raise InvalidImageError(
                f"image {path} has {n} pixel values (shape {shape}, {_human(size)} decoded), above the limit of "
                f"{max_pixels}; crop it, or raise the limit (--max-pixels, max_pixels) if you have the memory"
            )
    try:
        if suffix == ".png":
            import imageio.v3 as iio

            data = np.asarray(iio.imread(path))
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            import tifffile

            data = np.asarray(tifffile.imread(path))
    # the readers raise many unrelated types for damaged files (ValueError, OSError, EOFError, ...)
    except Exception as e:
        raise _unreadable(path, e) from e
    if not isinstance(data, np.ndarray) or not (
        data.dtype == bool or np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
    ):
        raise InvalidImageError(
            f"image {path} has dtype {getattr(data, 'dtype', type(data))}, not a boolean, integer or real "
            "number type; save it as integers or floats"
        )
    if data.size == 0:
        raise InvalidImageError(f"image {path} is empty (shape {data.shape}); remove it or re-export it")
    return data


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`check_images` found: the images to score, warnings about them, and the images skipped.

    Parameters
    ----------
    paths : tuple of Path
        The readable images, in the order given.
    warnings : tuple of str
        One line per image that is scored but says little (a constant image), naming the file.
    skipped : tuple of (Path, str)
        Each unreadable image with the one-line reason; empty unless ``skip_bad=True``.
    """

    paths: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    skipped: tuple[tuple[Path, str], ...] = ()


def check_images(
    paths: Sequence[Path],
    *,
    axes: str | None = None,
    skip_bad: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    channels: Sequence[int] | None = None,
    cache: ImageCache | None = None,
) -> ImageCheck:
    """Read every target image once, before any model runs; report the unreadable ones all together.

    Images of different shapes are fine: each is padded (or tiled) to a size the model accepts
    and cropped back. A constant image (every pixel equal) is kept and scored, but flagged: it
    has no structure, so how consistently a model segments it says little about transferability.

    Parameters
    ----------
    paths : sequence of Path
        From :func:`list_images`.
    axes : str, optional
        As :func:`to_yx`.
    skip_bad : bool, optional
        Return the unreadable images in :attr:`ImageCheck.skipped` instead of raising; the
        caller decides what to do when none is left.
    max_pixels : int or None, optional
        As :func:`read_image`.
    channels : sequence of int, optional
        Channels selected with ``--channels``: each image must have them.
    cache : ImageCache, optional
        Keeps the decoded images for the models that score them.

    Returns
    -------
    ImageCheck
        The readable images, one warning per constant image, and the skipped ones.

    Raises
    ------
    InvalidImageError
        Unless ``skip_bad``: an image cannot be read (unreadable, too large, empty file,
        unsupported dtype, axes that do not fit). One image's error is raised as is; several are
        raised as one error whose first line counts them and whose next lines give each one's reason.

    Examples
    --------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> np.save(tmp / "flat.npy", np.full((8, 8), 3, dtype=np.uint8))
    >>> "constant: every pixel is 3.0" in check_images([tmp / "flat.npy"]).warnings[0]
    True
    >>> _ = (tmp / "bad.tif").write_bytes(b"not a tiff")
    >>> check = check_images([tmp / "flat.npy", tmp / "bad.tif"], skip_bad=True)
    >>> [p.name for p in check.paths], [p.name for p, _ in check.skipped]
    (['flat.npy'], ['bad.tif'])
    """
    warnings: list[str] = []
    readable: list[Path] = []
    errors: list[tuple[Path, InvalidImageError]] = []
    reader = cache or ImageCache(0)
    for path in paths:
        try:
            raw = reader.read(path, max_pixels=max_pixels)
            data = to_yx(raw, axes=axes or reader.axes(path), path=path)
            if channels is not None:
                to_model_input(raw, axes=axes or reader.axes(path), channels=channels, n_channels=len(channels),
                               path=path)
        except InvalidImageError as e:  # every bad image is collected, so one run shows the user all of them
            errors.append((path, e))
            continue
        readable.append(path)
        if data.min() == data.max():
            warnings.append(f"image {path} is constant: every pixel is {float(data.flat[0])}; it is scored, but "
                            "a blank image says little about a model's transferability, remove it from the targets")
    if errors and not skip_bad:
        if len(errors) == 1:
            raise errors[0][1]
        lines = "\n".join(f"  {e}" for _, e in errors)
        raise InvalidImageError(f"{len(errors)} of {len(paths)} images cannot be read; fix or remove them (or skip "
                                f"them with --skip-bad-images, skip_bad=True):\n{lines}") from errors[0][1]
    return ImageCheck(tuple(readable), tuple(warnings), tuple((p, str(e)) for p, e in errors))


def _labels_by_stem(folder: Path) -> dict[str, list[Path]]:
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if _is_image_file(p):
            by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def load_labels(
    image_paths: Sequence[Path],
    labels_spec: str | Path,
    *,
    axes: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[np.ndarray]:
    """Load the label image of each target image: the file with the same stem in a labels folder.

    Parameters
    ----------
    image_paths : sequence of Path
        The target images, e.g. from :func:`list_images`.
    labels_spec : str or Path
        The folder holding the labels (any supported suffix, e.g. ``img01.tif`` ↔ ``img01.png``).
    axes : str, optional
        The images' axes, as for :func:`to_yx`; used to work out each image's ``yx``/``zyx``
        shape, which its label must match.
    max_pixels : int or None, optional
        As :func:`read_image`, for each label and image.

    Returns
    -------
    list of numpy.ndarray
        One label array per image, in the same order, with the stored dtype and size-1 axes
        dropped.

    Raises
    ------
    InvalidImageError
        The labels folder does not exist, an image has no label or two candidate labels, or a
        label's shape differs from its image's.

    Examples
    --------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp()); (tmp / "labels").mkdir()
    >>> np.save(tmp / "a.npy", np.ones((5, 6), dtype=np.uint8))
    >>> np.save(tmp / "labels" / "a.npy", np.zeros((1, 5, 6), dtype=np.int32))
    >>> load_labels([tmp / "a.npy"], tmp / "labels")[0].shape
    (5, 6)
    """
    folder = Path(labels_spec).expanduser()
    if not folder.is_dir():
        raise InvalidImageError(
            f"labels folder {folder} does not exist or is not a folder; pass the folder holding one label "
            "file per image, with the same file name stem"
        )
    by_stem = _labels_by_stem(folder)
    labels: list[np.ndarray] = []
    for image_path in image_paths:
        image_path = Path(image_path)
        candidates = by_stem.get(image_path.stem, [])
        if not candidates:
            raise InvalidImageError(
                f"no label for image {image_path} in {folder}: expected a file named "
                f"{image_path.stem} with suffix .tif, .tiff, .png or .npy"
            )
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise InvalidImageError(
                f"several labels for image {image_path} in {folder} ({names}); keep only one of them"
            )
        label_path = candidates[0]
        label = read_image(label_path, max_pixels=max_pixels)
        label = label.reshape([n for n in label.shape if n != 1])
        # the image is read in full only for its shape: formats differ in how cheaply they expose it,
        # and labels are loaded for small evaluation sets
        image_shape = to_yx(read_image(image_path, max_pixels=max_pixels), axes=axes or tiff_axes(image_path),
                            path=image_path).shape
        if label.shape != image_shape:
            raise InvalidImageError(
                f"label {label_path} has shape {label.shape} but image {image_path} has shape {image_shape} "
                "(after axis handling); labels must match their image pixel for pixel"
            )
        labels.append(label)
    return labels


def load_target(path: Path, *, axes: str | None = None, channels: Sequence[int] | None = None,
                n_channels: int = 1, model: str = "the model",
                max_pixels: int | None = DEFAULT_MAX_PIXELS, cache: ImageCache | None = None) -> np.ndarray:
    """Read one target image as a model taking ``n_channels`` channels is fed it (see :func:`to_model_input`).

    A TIFF whose metadata names its axes (ImageJ hyperstack, OME) is read with those axes unless
    ``axes`` is given. With a ``cache``, the file is decoded once for every model of the run.
    """
    reader = cache or ImageCache(0)
    return to_model_input(reader.read(path, max_pixels=max_pixels), axes=axes or reader.axes(path),
                          channels=channels, n_channels=n_channels, path=path, model=model)


class ImageCache:
    """The target images of one ranking, decoded once and shared by every model (as read-only arrays).

    Images are kept in the order they are first read until ``max_bytes`` of decoded pixels are held; an image
    beyond that is decoded again each time it is needed, as without a cache, so memory stays bounded whatever the
    target's size. Every model reads the images in the same order, so keeping the first ones is what lets the next
    model reuse them: a least-recently-used cache smaller than the target would drop each image just before the next
    model asks for it. ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._pixels: dict[tuple[str, int | None], np.ndarray] = {}
        self._axes: dict[str, str | None] = {}

    def read(self, path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """:func:`read_image`, decoded once while the cache has room."""
        key = (str(path), max_pixels)
        data = self._pixels.get(key)
        if data is None:
            data = read_image(path, max_pixels=max_pixels)
            if self.nbytes + data.nbytes <= self.max_bytes:
                data.flags.writeable = False  # shared by every model: nobody may change it for the others
                self._pixels[key] = data
                self.nbytes += data.nbytes
        return data

    def axes(self, path: Path) -> str | None:
        """:func:`tiff_axes`, read once per file (it opens the TIFF)."""
        key = str(path)
        if key not in self._axes:
            self._axes[key] = tiff_axes(path)
        return self._axes[key]


def target_task(folder: Path) -> str | None:
    """The task a target's images are for (``task`` in its ``target.yaml``), or None."""
    import yaml

    path = Path(folder) / "target.yaml"
    if not path.is_file():
        return None
    meta = yaml.safe_load(path.read_text()) or {}
    return str(meta["task"]) if isinstance(meta, dict) and "task" in meta else None


def dataset_fingerprint(image_paths: Sequence[Path]) -> str:
    """sha256 over the target's file names and contents, independent of where the folder is.

    Files are taken in order of their names, so listing order does not matter; renaming,
    adding, removing or editing an image changes the fingerprint.

    Parameters
    ----------
    image_paths : sequence of Path
        The target images.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    InvalidImageError
        No images, or an image cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.tif").write_bytes(b"pixels")
    >>> len(dataset_fingerprint([folder / "a.tif"]))
    64
    """
    paths = sorted((Path(p) for p in image_paths), key=lambda p: (p.name, str(p)))
    if not paths:
        raise InvalidImageError("no target images to fingerprint; pass the images the ranking was made on")
    digest = hashlib.sha256()
    for path in paths:
        try:
            size = path.stat().st_size
            # name and size first, so that the boundary between two files is unambiguous
            digest.update(f"{path.name}\0{size}\0".encode())
            with path.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise InvalidImageError(f"cannot read target image {path}: {e.strerror or e}; check the --images "
                                    "path") from e
    return digest.hexdigest()
