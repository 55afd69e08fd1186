"""Reading target images (and their labels) from folders, globs and files.

Supported files are ``.tif``/``.tiff`` (tifffile), ``.png`` (imageio) and ``.npy``
(numpy, without pickle); suffixes are matched case-insensitively. Images are handed on as
float32 arrays with axes ``"yx"`` or ``"zyx"``, channel axis first for models taking several
channels; the axis rules and channel selection are in :mod:`bioimage_cte.predict.image_axes`.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.predict.image_axes import tiff_axes, to_model_input, to_yx
from bioimage_cte.predict.image_headers import decoded_size

__all__ = [
    "dataset_fingerprint",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageCache",
    "ImageCheck",
    "check_images",
    "label_like",
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
            inner = path / "images"
            if inner.is_dir() and any(_is_image_file(p) for p in inner.iterdir()):  # a target folder, not its images
                raise InvalidImageError(f"no images found in {path}, but its images/ folder holds some: pass {inner}")
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
            decoded = decoded_size(path, suffix)
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
    labelled: list[tuple[Path, str]] = []
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
        elif (label := label_like(raw)) is not None:  # the stored dtype, before float conversion
            labelled.append((path, label))
    if labelled:
        first, why = labelled[0]
        warnings.append(f"{len(labelled)} of {len(paths)} images look like label images, not microscopy ({first}: "
                        f"{why}); a ranking on label masks means nothing: pass the raw images (e.g. the images/ "
                        "folder next to labels/)")
    if errors and not skip_bad:
        if len(errors) == 1:
            raise errors[0][1]
        lines = "\n".join(f"  {e}" for _, e in errors)
        raise InvalidImageError(f"{len(errors)} of {len(paths)} images cannot be read; fix or remove them (or skip "
                                f"them with --skip-bad-images, skip_bad=True):\n{lines}") from errors[0][1]
    return ImageCheck(tuple(readable), tuple(warnings), tuple((p, str(e)) for p, e in errors))


#: An image is taken for a label image when 0 covers at least this share of it ...
LABEL_BACKGROUND = 0.2
#: ... it holds at most this many distinct values per pixel ...
LABEL_DISTINCT = 0.02
#: ... and at least this share of horizontally adjacent foreground pixels hold the same value (flat objects).
LABEL_FLAT = 0.9


def label_like(data: np.ndarray) -> str | None:
    """Why ``data`` looks like an integer label image (instance or binary masks) rather than a micrograph, or None.

    Label images are integer-valued, mostly background 0, hold few distinct values, and each object is one flat
    value; a micrograph, even a dark 8-bit one, has noise on its objects.

    Examples
    --------
    >>> labels = np.zeros((64, 64), np.uint16); labels[10:20, 10:20] = 1; labels[30:50, 5:25] = 2
    >>> label_like(labels)
    'integer values, 2 distinct besides background 0 (88 % of the pixels), flat objects'
    >>> label_like(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)) is None
    True
    """
    if data.dtype.kind not in "iub" or data.size == 0:
        return None
    background = float(np.count_nonzero(data == 0)) / data.size
    if background < LABEL_BACKGROUND or background == 1.0:
        return None
    values = np.unique(data)
    if values.size > max(2, LABEL_DISTINCT * data.size):
        return None
    left, right = data[..., :-1], data[..., 1:]
    inside = (left != 0) & (right != 0)
    if not inside.any() or float(np.mean(left[inside] == right[inside])) < LABEL_FLAT:
        return None
    return (f"integer values, {values.size - 1} distinct besides background 0 ({background * 100:.0f} % of the "
            "pixels), flat objects")


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
