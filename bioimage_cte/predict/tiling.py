"""Which input sizes a model accepts, and how an image of any size is fitted to them.

A model's spatial input axes (``y``, ``x`` and, for 3D models, ``z``) each accept either one exact
size or ``min + k * step`` sizes, and its output axes may declare a halo: border pixels that are
less reliable and are cropped away when tiling. :func:`plan` decides, per image, between

- one padded pass: the image is reflect-padded, centred, to the smallest accepted size that holds
  it plus its halo, and the output is cropped back; or
- tiling: blocks of an accepted size (at most ``budget`` voxels, so memory stays bounded whatever
  the image size) predicted through bioimageio.core's blocking with the model's halo. A model with
  one exact input size always takes this path for images larger than that size.

Nothing here runs a model; :mod:`bioimage_cte.predict.predictor` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bioimageio.spec.model import v0_5

from bioimage_cte.base.errors import InvalidImageError, InvalidModelError

__all__ = ["Plan", "SpatialSpec", "crop_output", "output_geometry", "pad_to_valid", "plan", "spatial_axes",
           "spatial_spec", "valid_size"]


@dataclass(frozen=True)
class SpatialSpec:
    """Sizes one spatial input axis accepts (``min + k * step``; ``step`` 0: exactly ``minimum``) and its halo."""

    minimum: int
    step: int
    halo: int


@dataclass(frozen=True)
class Plan:
    """How to run one image: ``sizes`` is the padded input (``blocked`` False) or the block shape (True).

    ``pad`` is the centred padding, (before, after) per spatial axis, applied before either path.
    """

    blocked: bool
    sizes: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]


def spatial_axes(descr: v0_5.ModelDescr) -> str:
    """The model's spatial input axes in order, ``"yx"`` or ``"zyx"``."""
    ids = [str(a.id) for a in descr.inputs[0].axes]
    return "".join(a for a in "zyx" if a in ids)


def spatial_spec(descr: v0_5.ModelDescr, axis_id: str, *, output_id: str | None = None) -> SpatialSpec:
    """The :class:`SpatialSpec` of input axis ``axis_id``, with the halo of the scored output (default: the largest).

    Raises
    ------
    InvalidModelError
        The axis size is neither fixed nor parameterized (e.g. it refers to another tensor).
    """
    axis = next(a for a in descr.inputs[0].axes if str(a.id) == axis_id)
    outputs = [o for o in descr.outputs if output_id is None or str(o.id) == output_id]
    # a halo counts output pixels: in input pixels it is the output's scale times larger
    halo = max((math.ceil(getattr(a, "halo", 0) * _relative_scale(a, axis))
                for o in outputs for a in o.axes if str(a.id) == axis_id), default=0)
    size = axis.size
    if isinstance(size, v0_5.ParameterizedSize):
        return SpatialSpec(size.min, size.step, halo)
    if isinstance(size, int):
        return SpatialSpec(size, 0, halo)
    raise InvalidModelError(f"input axis {axis_id} has a size of type {type(size).__name__}; "
                            "bioimage-cte needs a fixed or parameterized size")


def _relative_scale(out_axis, in_axis) -> float:
    """How many input pixels one output pixel spans along an axis (2.0: the output has half the resolution)."""
    return float(getattr(out_axis, "scale", 1.0) or 1.0) / float(getattr(in_axis, "scale", 1.0) or 1.0)


def output_geometry(descr: v0_5.ModelDescr, output_id: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(scale, offset) of output ``output_id`` per spatial input axis, relative to the model's input.

    ``scale`` is how many input pixels one output pixel spans (2.0: half resolution; 0.25: four times the input's
    resolution); ``offset`` is the output's extra size in output pixels (``SizeReference.offset``), split evenly
    between both borders. An output of the input's grid has scale 1 and offset 0 on every axis.
    """
    from bioimage_cte.zoo.readout import output_scale

    tensor = next(o for o in descr.outputs if str(o.id) == output_id)
    by_id = {str(a.id): a for a in tensor.axes}
    known = dict(output_scale(descr, tensor))
    scales, offsets = [], []
    for a in spatial_axes(descr):
        out = by_id.get(a)
        scales.append(known.get(a, 1.0))
        size = getattr(out, "size", None)
        offsets.append(int(getattr(size, "offset", 0) or 0) if isinstance(size, v0_5.SizeReference) else 0)
    return tuple(scales), tuple(offsets)


def crop_output(array: np.ndarray, pad: Sequence[tuple[int, int]], shape: Sequence[int],
                scale: Sequence[float], offset: Sequence[int]) -> np.ndarray:
    """The part of an output over the image of spatial ``shape`` that was padded by ``pad`` (:func:`crop` on the
    output's own grid: the padding and the image's extent divided by the output's ``scale``, shifted by half its
    ``offset``).

    Examples
    --------
    >>> out = np.arange(64.0).reshape(8, 8)  # half the resolution of a 16 x 16 input padded from 12 x 12
    >>> crop_output(out, ((2, 2), (2, 2)), (12, 12), (2.0, 2.0), (0, 0)).shape
    (6, 6)
    >>> full = np.zeros((16, 16))  # the same input's output on its own grid: as crop does
    >>> crop_output(full, ((2, 2), (2, 2)), (12, 12), (1.0, 1.0), (0, 0)).shape
    (12, 12)
    """
    index = []
    for i, ((before, _), n, s, o) in enumerate(zip(pad, shape, scale, offset, strict=True)):
        m = array.shape[array.ndim - len(pad) + i]
        start = max(0, int(round(before / s + o / 2)))
        index.append(slice(start, min(m, start + max(1, int(round(n / s))))))
    return array[(Ellipsis, *index)]


def valid_size(n: int, spec: SpatialSpec) -> int:
    """Smallest accepted input size that holds ``n`` pixels plus the halo on both sides.

    A fixed-size axis returns its size even when it is too small: :func:`plan` then tiles.

    Examples
    --------
    >>> valid_size(100, SpatialSpec(64, 16, 8))
    128
    >>> valid_size(100, SpatialSpec(64, 0, 8))
    64
    """
    need = n + 2 * spec.halo
    if spec.step == 0:
        return spec.minimum
    k = max(0, -(-(need - spec.minimum) // spec.step))
    return spec.minimum + k * spec.step


def _fits(n: int, spec: SpatialSpec) -> bool:
    return spec.step > 0 or n + 2 * spec.halo <= spec.minimum


def _centred(n: int, size: int) -> tuple[int, int]:
    before = (size - n) // 2
    return before, size - n - before


def plan(shape: Sequence[int], specs: Sequence[SpatialSpec], *, budget: int) -> Plan:
    """How to run an image of spatial ``shape``: one padded pass, or blocks of at most ``budget`` voxels.

    Examples
    --------
    >>> plan((100, 150), [SpatialSpec(32, 16, 8)] * 2, budget=1024**2)
    Plan(blocked=False, sizes=(128, 176), pad=((14, 14), (13, 13)))
    >>> plan((100, 150), [SpatialSpec(64, 0, 8)] * 2, budget=1024**2)
    Plan(blocked=True, sizes=(64, 64), pad=((0, 0), (0, 0)))
    """
    padded = [valid_size(n, s) for n, s in zip(shape, specs, strict=True)]
    if all(_fits(n, s) for n, s in zip(shape, specs, strict=True)) and math.prod(padded) <= budget:
        return Plan(False, tuple(padded), tuple(_centred(n, p) for n, p in zip(shape, padded, strict=True)))
    blocks = list(padded)
    # shrink the longest shrinkable axis a step at a time: blocks stay as large (few halos recomputed) and as
    # cubic as the budget allows
    while math.prod(blocks) > budget:
        shrinkable = [i for i, s in enumerate(specs) if s.step and blocks[i] - s.step >= s.minimum
                      and blocks[i] - s.step > 2 * s.halo]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda j: blocks[j])
        blocks[i] -= specs[i].step
    # bioimageio.core's blocking pads the halo at the image border itself (the predictor asks for reflect, as in
    # the padded pass) but needs the sample at least one block large: only smaller axes are padded here, so a
    # large volume is never copied whole
    pad = tuple(_centred(n, max(n, b)) for n, b in zip(shape, blocks, strict=True))
    return Plan(True, tuple(blocks), pad)


def pad_to_valid(image: np.ndarray, specs: Sequence[SpatialSpec], *, name: str = "model"):
    """Reflect-pad the last ``len(specs)`` axes of ``image``, centred, to the smallest size the model accepts.

    Returns the padded image and the offset of the original image in it, for cropping back.

    Raises
    ------
    InvalidImageError
        An axis of one exact size cannot hold the image plus halo (tile it with :func:`plan` instead).
    """
    spatial = image.shape[-len(specs):]
    for n, a, spec in zip(spatial, "zyx"[-len(specs):], specs, strict=True):
        if not _fits(n, spec):
            raise InvalidImageError(f"{name}: image axis {a} has {n} px but the model takes exactly "
                                    f"{spec.minimum}; predict it tile by tile")
    sizes = [valid_size(n, spec) for n, spec in zip(spatial, specs, strict=True)]
    pad = [_centred(n, s) for n, s in zip(spatial, sizes, strict=True)]
    return pad_centred(image, pad), tuple(b for b, _ in pad)


def pad_centred(image: np.ndarray, pad: Sequence[tuple[int, int]]) -> np.ndarray:
    """Pad the last ``len(pad)`` axes: reflect, or symmetric (edges repeated) when a pad is longer than an axis."""
    if not any(b or a for b, a in pad):
        return image
    full = [(0, 0)] * (image.ndim - len(pad)) + list(pad)
    spatial = image.shape[-len(pad):]
    return np.pad(image, full, mode="reflect" if min(spatial) > max(max(p) for p in pad) else "symmetric")


def crop(array: np.ndarray, pad: Sequence[tuple[int, int]]) -> np.ndarray:
    """Undo :func:`pad_centred` on the last ``len(pad)`` axes."""
    index = tuple(slice(b, array.shape[i - len(pad)] - a) for i, (b, a) in enumerate(pad))
    return array[(Ellipsis, *index)]


def probe_shape(descr: v0_5.ModelDescr) -> tuple[int, ...]:
    """A small valid input shape in the model's axis order (batch 1), e.g. for one probing forward pass."""
    shape = []
    for axis in descr.inputs[0].axes:
        if isinstance(axis, v0_5.ChannelAxis):
            shape.append(len(axis.channel_names))
        elif str(axis.id) in ("z", "y", "x"):
            shape.append(valid_size(16 if str(axis.id) == "z" else 128, spatial_spec(descr, str(axis.id))))
        else:
            shape.append(1)
    return tuple(shape)
