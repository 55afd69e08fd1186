"""Which image channels feed which input of a model with several inputs (``--inputs name=channel,...``).

A model with two or more input tensors (the spec's ``unet2d_multi_tensor``: ``input0`` and ``input1``) is fed from
the channels of one image: each input gets the image channels the mapping names, in order. The mapping is

1. ``--inputs input0=1,input1=0`` (``RankOptions.inputs``): every input named, each with one channel index, or with
   several joined by ``+`` for an input that takes several channels (``rgb=0+1+2``);
2. else, when the inputs' names say it unambiguously, the default: every input takes one channel and their ids end
   in distinct numbers counting from 0 or from 1 (``input0``, ``input1``; ``ch1``, ``ch2``): input *k* gets channel *k*;
3. else a one-line error listing the inputs and their descriptions, with the ``--inputs`` to pass.

A single-input model is not affected (``--channels`` selects its channels). This module reads RDFs and
descriptions only; the predictor splits the image by :func:`input_feed`'s answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bioimage_cte.base.errors import UnsupportedModelError

__all__ = ["InputSlot", "describe_inputs", "input_feed", "parse_inputs", "rdf_inputs"]


@dataclass(frozen=True)
class InputSlot:
    """One input tensor of a model: its id, description and how many channels it takes."""

    id: str
    description: str
    channels: int


def parse_inputs(value: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``"a=0,b=1"`` (or pairs, or a dict) as ``(("a", (0,)), ("b", (1,)))``; a one-line error for anything else.

    Examples
    --------
    >>> parse_inputs("input0=1, input1=0")
    (('input0', (1,)), ('input1', (0,)))
    >>> parse_inputs({"rgb": "0+1+2"})
    (('rgb', (0, 1, 2)),)
    """
    if isinstance(value, str):
        items = [part.split("=", 1) for part in value.split(",") if part.strip()]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        items = [tuple(item) for item in value]
    pairs = []
    try:
        for name, channels in items:
            if isinstance(channels, int):
                indices: tuple[int, ...] = (channels,)
            elif isinstance(channels, str):
                indices = tuple(int(c) for c in channels.split("+"))
            else:
                indices = tuple(int(c) for c in channels)
            if not str(name).strip() or not indices or min(indices) < 0:
                raise ValueError
            pairs.append((str(name).strip(), indices))
    except (ValueError, TypeError):
        raise ValueError(f"inputs={value!r}: use INPUT=CHANNEL pairs separated by commas, e.g. input0=0,input1=1 "
                         "(CHANNEL+CHANNEL for an input taking several channels)") from None
    if not pairs or len({n for n, _ in pairs}) != len(pairs):
        raise ValueError(f"inputs={value!r}: name each input once, e.g. input0=0,input1=1")
    return tuple(pairs)


def describe_inputs(descr: Any) -> tuple[InputSlot, ...]:
    """The :class:`InputSlot` of every input of a loaded (format 0.5) model description."""
    from bioimageio.spec.model import v0_5

    slots = []
    for tensor in descr.inputs:
        channels = next((len(a.channel_names) for a in tensor.axes if isinstance(a, v0_5.ChannelAxis)), 1)
        slots.append(InputSlot(str(tensor.id), " ".join(str(tensor.description or "").split()), channels))
    return tuple(slots)


def rdf_inputs(rdf: Any) -> tuple[InputSlot, ...] | None:
    """The :class:`InputSlot` of every input of a raw RDF (format 0.4 or 0.5); None when it does not say plainly."""
    try:
        slots = []
        for tensor in rdf["inputs"]:
            name = str(tensor.get("id", tensor.get("name", "")))
            axes = tensor["axes"]
            if isinstance(axes, str):
                shape = tensor.get("shape")
                shape = shape.get("min") if isinstance(shape, dict) else shape
                channels = int(shape[axes.index("c")]) if "c" in axes else 1
            else:
                channel = next((a for a in axes if a.get("type") == "channel"), None)
                names = None if channel is None else channel.get("channel_names")
                channels = 1 if channel is None else len(names) if isinstance(names, list) else int(
                    channel.get("size", 1) or 1)
            slots.append(InputSlot(name, " ".join(str(tensor.get("description", "") or "").split()), channels))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return tuple(slots)


def _numbered(slots: Sequence[InputSlot]) -> tuple[int, ...] | None:
    """Channel per input when the ids end in distinct numbers counting from 0 or 1; None otherwise."""
    numbers = []
    for slot in slots:
        match = re.search(r"(\d+)$", slot.id)
        if match is None or slot.channels != 1:
            return None
        numbers.append(int(match.group(1)))
    base = min(numbers)
    if base not in (0, 1) or sorted(numbers) != list(range(base, base + len(numbers))):
        return None
    return tuple(n - base for n in numbers)


def input_feed(slots: Sequence[InputSlot], mapping: Sequence[tuple[str, Sequence[int]]] | None, *,
               name: str = "model") -> tuple[int, ...] | None:
    """The image channels fed to a model's inputs, concatenated in input order (None for a single-input model).

    Raises
    ------
    UnsupportedModelError
        A multi-input model whose mapping is neither given (``--inputs``) nor said by its input names, or a mapping
        that misses an input or gives an input a wrong number of channels.

    Examples
    --------
    >>> two = [InputSlot("input0", "", 1), InputSlot("input1", "", 1)]
    >>> input_feed(two, None), input_feed(two, [("input0", (1,)), ("input1", (0,))])
    ((0, 1), (1, 0))
    >>> input_feed([InputSlot("raw", "", 1)], None) is None
    True
    """
    if len(slots) < 2:
        return None
    listing = "; ".join(f"{s.id} ({s.channels} channel{'s' if s.channels > 1 else ''}"
                        f"{': ' + repr(s.description) if s.description else ''})" for s in slots)
    example = ",".join(f"{s.id}={'+'.join(str(i + k) for k in range(s.channels))}"
                       for i, s in enumerate(slots))
    if mapping:
        given = {n: tuple(c) for n, c in mapping}
        missing = [s.id for s in slots if s.id not in given]
        wrong = [s.id for s in slots if s.id in given and len(given[s.id]) != s.channels]
        if missing or wrong:
            problem = (f"--inputs names no channel for {', '.join(missing)}" if missing else
                       f"--inputs gives {', '.join(wrong)} another number of channels than it takes")
            raise UnsupportedModelError(f"{name}: {problem}; its inputs are {listing}; pass e.g. --inputs {example}")
        return tuple(c for s in slots for c in given[s.id])
    numbered = _numbered(slots)
    if numbered is None:
        raise UnsupportedModelError(f"{name}: model has {len(slots)} inputs ({listing}) and their names do not say "
                                    f"which image channel feeds which; pass e.g. --inputs {example}")
    return numbered
