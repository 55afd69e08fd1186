"""Which output of a model is scored, and the role of each of its channels: read from the RDF alone.

Zoo models write their outputs in many ways. The choice, made once per model from its RDF:

1. ``--output-channel`` (``RankOptions.output_channel``) wins: a channel name (``nuclei``), an output
   tensor id (``prob``), ``TENSOR:CHANNEL`` (``prob:foreground``) or a 0-based channel index.
2. Of several output tensors, the probability one: a tensor id or channel name that says
   foreground/probability, else a sigmoid/softmax postprocessing, else the first. A StarDist-style
   model (``prob`` + ``dist``) is scored on ``prob``.
3. In that tensor, channel names say the roles: foreground (``foreground``, ``fg``, ``mask``,
   ``nuclei``, ``cells``, ``prob`` ...), boundary (``boundary``, ``contour``, ``membrane`` ...),
   background (``background``, ``bg``), affinities (``aff...``).

   - foreground named: it is scored; a boundary channel, if named, seeds instance watershed;
   - softmax over two or more channels (multi-class): the whole (C, ...) probability array goes to
     scoring as ``Prediction.classes``; the foreground is the named foreground channel, else
     ``1 - P(background)`` (the named background channel, else channel 0);
   - boundary only, or affinities only: the boundary map is scored (``Prediction.scored ==
     "boundary"``); affinities follow the torch-em convention of the zoo's affinity models (1 between
     objects), so their boundary map is the mean of the affinity channels;
   - nothing named: channel 0.

The ranking JSON records the choice (:meth:`Readout.to_json_dict`); the predictor turns an output into a
:class:`~bioimage_cte.predict.segmentation.Prediction` by it (:func:`bioimage_cte.predict.segmentation.read_out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bioimage_cte.base.errors import InvalidModelError

if TYPE_CHECKING:  # bioimageio.spec is imported only where an RDF is read: Readout itself is plain data
    from bioimageio.spec.model import v0_5

__all__ = ["BOUNDARY_NAMES", "FOREGROUND_NAMES", "Readout", "choose_readout", "output_scale"]

FOREGROUND_NAMES = ("foreground", "fg", "mask", "prob", "probability", "probabilities", "semantic", "nuclei",
                    "nucleus", "cells", "cell", "objects", "object", "binary")
BOUNDARY_NAMES = ("boundary", "boundaries", "contour", "contours", "edge", "edges", "border", "borders",
                  "membrane", "membranes")
BACKGROUND_NAMES = ("background", "bg")
_PROBABILITY_TENSORS = FOREGROUND_NAMES + ("probs", "output_prob", "pred", "prediction", "predictions", "output")
_SCORED_OPS = {"SigmoidDescr", "SoftmaxDescr", "BinarizeDescr"}


@dataclass(frozen=True)
class Readout:
    """Which output tensor of one model is scored, the roles of its channels, and why.

    Channel indices refer to the tensor's channel axis (0 when it has none). ``background`` is used
    only for multi-class outputs without a named foreground channel.
    """

    tensor: str
    channel_names: tuple[str, ...]
    foreground: int | None
    boundary: int | None = None
    background: int | None = None
    affinities: tuple[int, ...] = ()
    multiclass: bool = False
    how: str = ""
    #: input pixels per output pixel on each spatial axis of the scored tensor, e.g. ``{"y": 2.0, "x": 2.0}`` for an
    #: output at half the input's resolution (consistency is computed on the output's grid, true metrics and
    #: overlays on the labels' grid)
    scale: tuple[tuple[str, float], ...] = ()

    @property
    def scored(self) -> str:
        """``"foreground"``, or ``"boundary"`` when the model has no foreground map and its boundary map is scored."""
        return "foreground" if self.foreground is not None or self.multiclass else "boundary"

    def to_json_dict(self) -> dict[str, Any]:
        """What the ranking JSON records: tensor, scored channel (name and index, None for derived maps), how."""
        index = self.foreground if self.foreground is not None else self.boundary
        name = self.channel_names[index] if index is not None and index < len(self.channel_names) else None
        return {"tensor": self.tensor, "channel": name, "index": index, "scored": self.scored, "how": self.how,
                "scale": dict(self.scale)}


def _channel_names(tensor: v0_5.OutputTensorDescr) -> list[str]:
    from bioimageio.spec.model import v0_5

    axis = next((a for a in tensor.axes if isinstance(a, v0_5.ChannelAxis)), None)
    return [str(c) for c in axis.channel_names] if axis is not None else []


def output_scale(descr: v0_5.ModelDescr, tensor: v0_5.OutputTensorDescr) -> tuple[tuple[str, float], ...]:
    """(axis, input pixels per output pixel) for each spatial axis of ``tensor`` that the first input has too."""
    inputs = {str(a.id): a for a in descr.inputs[0].axes}
    pairs = []
    for a in tensor.axes:
        if str(a.id) in ("z", "y", "x") and str(a.id) in inputs:
            out_scale = float(getattr(a, "scale", 1.0) or 1.0)
            pairs.append((str(a.id), out_scale / float(getattr(inputs[str(a.id)], "scale", 1.0) or 1.0)))
    return tuple(pairs)


def _ops(tensor: v0_5.OutputTensorDescr) -> set[str]:
    return {type(p).__name__ for p in tensor.postprocessing}


def _index(names: Sequence[str], wanted: Sequence[str]) -> int | None:
    lowered = [n.lower() for n in names]
    return next((i for i, n in enumerate(lowered) if n in wanted), None)


def _is_affinity(name: str) -> bool:
    return name.lower().startswith(("aff", "affinity", "affinities"))


def _describe(descr: v0_5.ModelDescr) -> str:
    parts = []
    for o in descr.outputs:
        names = _channel_names(o)
        parts.append(f"{o.id} ({', '.join(names) if len(names) <= 6 else f'{len(names)} channels'})" if names
                     else str(o.id))
    return "; ".join(parts)


def _default_tensor(descr: v0_5.ModelDescr) -> v0_5.OutputTensorDescr:
    def rank(item: tuple[int, v0_5.OutputTensorDescr]) -> tuple[int, int]:
        i, o = item
        names = [n.lower() for n in _channel_names(o)]
        named = (str(o.id).lower() in _PROBABILITY_TENSORS
                 or any(n in FOREGROUND_NAMES + BOUNDARY_NAMES or _is_affinity(n) for n in names))
        return (0 if named else 1 if _ops(o) & _SCORED_OPS else 2, i)

    return min(enumerate(descr.outputs), key=rank)[1]


def _forced(descr: v0_5.ModelDescr, choice: str, name: str) -> tuple[v0_5.OutputTensorDescr, int | None]:
    """(tensor, channel index or None to choose by names) named by ``--output-channel``."""
    tensors = {str(o.id).lower(): o for o in descr.outputs}
    wanted_tensor, _, wanted_channel = choice.rpartition(":")
    if wanted_tensor:
        tensor = tensors.get(wanted_tensor.lower())
    elif choice.lower() in tensors:
        return tensors[choice.lower()], None
    else:
        tensor = None
    candidates = [tensor] if tensor is not None else ([] if wanted_tensor else [_default_tensor(descr)] +
                                                      list(descr.outputs))
    for t in candidates:
        names = _channel_names(t)
        if wanted_channel.isdigit():
            n = max(1, len(names))
            if int(wanted_channel) < n:
                return t, int(wanted_channel)
            break
        index = _index(names, (wanted_channel.lower(),))
        if index is not None:
            return t, index
    raise InvalidModelError(f"{name}: --output-channel {choice!r} matches no output of this model; its outputs are "
                            f"{_describe(descr)}; pass a channel name, a tensor id, TENSOR:CHANNEL or an index")


def choose_readout(descr: v0_5.ModelDescr, *, output_channel: str | None = None, name: str = "model") -> Readout:
    """The :class:`Readout` of a model: the scored tensor and channel roles (see the module docstring).

    Raises
    ------
    InvalidModelError
        ``output_channel`` matches nothing in the model's outputs.
    """
    import dataclasses

    readout = _choose(descr, output_channel=output_channel, name=name)
    tensor = next(o for o in descr.outputs if str(o.id) == readout.tensor)
    return dataclasses.replace(readout, scale=output_scale(descr, tensor))


def _choose(descr: v0_5.ModelDescr, *, output_channel: str | None = None, name: str = "model") -> Readout:
    why = ""
    if output_channel:
        tensor, index = _forced(descr, output_channel, name)
        if index is not None:
            return Readout(str(tensor.id), tuple(_channel_names(tensor)), index,
                           how=f"--output-channel {output_channel}")
        why = f"--output-channel {output_channel}; "
    else:
        tensor = _default_tensor(descr)
        if len(descr.outputs) > 1:
            why = f"output {tensor.id} of {len(descr.outputs)} (the probability one); "
    names = _channel_names(tensor)
    channels = tuple(names)
    fg = _index(names, FOREGROUND_NAMES)
    bd = _index(names, BOUNDARY_NAMES)
    bg = _index(names, BACKGROUND_NAMES)
    affinities = tuple(i for i, n in enumerate(names) if _is_affinity(n))
    if "SoftmaxDescr" in _ops(tensor) and len(names) >= 2:
        if fg is not None:
            how = f"softmax over {len(names)} classes; channel {names[fg]!r} as foreground"
        else:
            how = (f"softmax over {len(names)} classes; foreground = 1 - P({names[bg or 0]!r}), the "
                   f"{'named' if bg is not None else 'first (assumed)'} background class")
        return Readout(str(tensor.id), channels, fg, bd, bg, (), True, why + how)
    if fg is not None:
        extra = f", {names[bd]!r} as boundary" if bd is not None else ""
        return Readout(str(tensor.id), channels, fg, bd, None, affinities if bd is None else (),
                       how=f"{why}channel named {names[fg]!r} as foreground{extra}")
    if bd is not None:
        return Readout(str(tensor.id), channels, None, bd, how=f"{why}boundary-only model: channel {names[bd]!r} "
                                                                 "(boundary map) is scored")
    if affinities:
        return Readout(str(tensor.id), channels, None, None, None, affinities,
                       how=f"{why}affinity model: the boundary map (mean of {len(affinities)} affinity channels, "
                           "1 between objects) is scored")
    if len(names) > 1:
        return Readout(str(tensor.id), channels, 0, how=f"{why}first of {len(names)} unnamed channels; pass "
                                                        "--output-channel to choose another")
    return Readout(str(tensor.id), channels, 0, how=f"{why}its only channel")
