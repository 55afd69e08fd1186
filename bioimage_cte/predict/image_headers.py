"""Image sizes from file headers alone, before any pixel is decoded (PNG, npy, TIFF).

:func:`bioimage_cte.predict.images.read_image` checks an image against its pixel limit with these, so that a huge
file is refused without being decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["decoded_size"]

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


def decoded_size(path: Path, suffix: str) -> tuple[int, int, tuple[int, ...]] | None:
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
