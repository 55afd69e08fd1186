"""Which models fit which targets, decided from the RDF and one image before any model is loaded.

A zoo run pairs every model with every target. A pair that cannot work -- a 3D model on 2D images, a model taking
two channels on single-channel images, a model of another task when tasks are matched -- is not a failure of the
model: it is left out of the scoring with a one-line reason, so the zoo's maintainers see why a model is not on a
target's ranking and their failure notifications are about models that broke. The rules are the ones the scoring
applies (:func:`bioimage_cte.predict.images.load_target` for channels, the predictor for 2D/3D), checked on the target's
first image, read once for all models (:class:`ImageFit`); a model whose RDF cannot be read here is kept and fails,
with its own reason, when it is loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError, one_line
from bioimage_cte.zoo.inputs import InputSlot, input_feed, rdf_inputs
from bioimage_cte.zoo.tags import matches_tag, task_groups

if TYPE_CHECKING:
    from bioimage_cte.zoo.sources import ModelSource

__all__ = ["ImageFit", "InputLayout", "input_layout", "mixed_dimensions_warning", "shape_reason", "task_reason"]


@dataclass(frozen=True)
class InputLayout:
    """What a model's inputs take: their spatial axes (``"yx"`` or ``"zyx"``) and their channel count (over all
    inputs); ``inputs`` lists the inputs of a model with several (fed from the image's channels, see
    :mod:`bioimage_cte.zoo.inputs`)."""

    spatial: str
    channels: int
    inputs: tuple[InputSlot, ...] = ()


def _layout_v05(axes: list[Any]) -> InputLayout | None:
    channels, spatial = 1, ""
    for axis in axes:
        if not isinstance(axis, Mapping):
            return None
        kind = str(axis.get("type", ""))
        # format 0.5's default id of a space axis is "x"
        name = str(axis.get("id", "x" if kind == "space" else kind))
        if kind == "channel":
            names = axis.get("channel_names")
            channels = len(names) if isinstance(names, list) else int(axis.get("size", 1) or 1)
        elif kind == "space" and name in ("z", "y", "x"):
            spatial += name
        elif kind != "batch":  # time, index or an unnamed space axis: the loader refuses it with its reason
            return None
    return InputLayout("".join(a for a in "zyx" if a in spatial), channels)


def _layout_v04(axes: str, shape: Any) -> InputLayout | None:
    axes = axes.lower()
    if set(axes) - set("bczyx"):
        return None
    channels = 1
    if "c" in axes:
        if isinstance(shape, list):
            channels = int(shape[axes.index("c")])
        elif isinstance(shape, Mapping) and isinstance(shape.get("min"), list):
            channels = int(shape["min"][axes.index("c")])
        else:
            return None
    return InputLayout("".join(a for a in "zyx" if a in axes), channels)


def input_layout(rdf: Any) -> InputLayout | None:
    """The inputs' layout from a raw RDF (format 0.4 or 0.5); None when the RDF does not say it plainly.

    Examples
    --------
    >>> input_layout({"inputs": [{"axes": "bczyx", "shape": [1, 1, 32, 64, 64]}]})
    InputLayout(spatial='zyx', channels=1, inputs=())
    >>> input_layout({"inputs": [{"axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["a", "b"]},
    ...                                    {"type": "space", "id": "y"}, {"type": "space"}]}]})
    InputLayout(spatial='yx', channels=2, inputs=())
    >>> [s.id for s in input_layout({"inputs": [{"name": f"in{i}", "axes": "bcyx", "shape": [1, 1, 64, 64]}
    ...                                         for i in range(2)]}).inputs]
    ['in0', 'in1']
    """
    try:
        first = rdf["inputs"][0]
        axes = first["axes"]
        layout = _layout_v04(axes, first.get("shape")) if isinstance(axes, str) else _layout_v05(list(axes))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if layout is None or layout.spatial not in ("yx", "zyx") or layout.channels < 1:
        return None
    if len(rdf["inputs"]) > 1:
        slots = rdf_inputs(rdf)
        if slots is None:
            return None
        layout = InputLayout(layout.spatial, sum(s.channels for s in slots), slots)
    return layout


def task_reason(tags: list[str], task: str) -> str | None:
    """Why a model tagged ``tags`` is not ranked on a target of ``task`` (None when it is, or has no tags).

    Examples
    --------
    >>> task_reason(["segmentation", "mitochondria"], "nuclei")
    'tagged for mitochondria, not for the target task nuclei'
    >>> task_reason(["nucleus"], "nuclei") is None
    True
    """
    if not tags or not task or matches_tag(tags, task):
        return None
    named = ", ".join(sorted(task_groups(tags))) or "no known task"
    return f"tagged for {named}, not for the target task {task}"


class ImageFit:
    """A target's first image, read once (on first use), against which every model's :class:`InputLayout` is checked.

    Channels are selected exactly as :func:`bioimage_cte.predict.images.load_target` does for the scoring (a
    single-channel model gets a multi-channel image's channels averaged, ``channels`` picks them); a 3D model needs
    z-stacks, while a 2D model runs on a stack slice by slice.
    """

    def __init__(self, image: Path, *, axes: str | None = None, channels: tuple[int, ...] | None = None,
                 max_pixels: int | None = None, inputs: Any = None) -> None:
        self.image, self.channels, self.max_pixels = Path(image), channels, max_pixels
        self.inputs = inputs  # a multi-input model's --inputs mapping
        self._axes = axes

    @functools.cached_property
    def _read(self) -> tuple[np.ndarray | None, str | None, str | None]:
        """(raw pixels, their axes, None), or (None, None, why the image cannot be read)."""
        from bioimage_cte.predict.images import read_image, tiff_axes

        try:
            return read_image(self.image, max_pixels=self.max_pixels), self._axes or tiff_axes(self.image), None
        except InvalidImageError as e:
            return None, None, one_line(e)

    def _fed(self, n_channels: int, model: str, channels: tuple[int, ...] | None) -> np.ndarray:
        from bioimage_cte.predict.image_axes import to_model_input

        data, axes, problem = self._read
        if problem is not None:
            raise InvalidImageError(problem)
        return to_model_input(data, axes=axes, channels=channels, n_channels=n_channels, path=self.image,
                              model=model)

    def reason(self, layout: InputLayout, *, model: str) -> str | None:
        """Why a model with ``layout`` cannot run on the image as the scoring would feed it (None when it can)."""
        channels = self.channels
        if layout.inputs:
            try:
                channels = input_feed(layout.inputs, self.inputs, name=model)
            except BioimageCteError:  # no mapping: the model fails with that reason when it is loaded
                return None
        try:
            data = self._fed(layout.channels, model, channels)
        except InvalidImageError as e:
            if layout.inputs:
                names = ", ".join(f"{s.id}={c}" for s, c in zip(layout.inputs, channels or (), strict=False))
                return (f"{model}: its {len(layout.inputs)} inputs are fed from image channels ({names}), which the "
                        f"image {self.image.name} does not have; rank it on images with those channels, or pass "
                        "--inputs")
            return one_line(e)
        if layout.spatial == "zyx" and data.ndim - (layout.channels > 1) == 2:
            # the predictor's own words for the same refusal
            return (f"{model}: 3D model (input axes {layout.spatial}) but the image is 2D {data.shape[-2:]}; rank 3D "
                    "models on z-stacks (--axes zyx)")
        return None

    @functools.cached_property
    def is_stack(self) -> bool:
        """Whether the image is a z-stack (as a single-channel model would be fed it)."""
        try:
            return self._fed(1, "the model", None).ndim == 3
        except InvalidImageError:
            return False


def shape_reason(layout: InputLayout, image: Path, *, model: str, axes: str | None = None,
                 channels: tuple[int, ...] | None = None, max_pixels: int | None = None) -> str | None:
    """Why a model with ``layout`` cannot run on ``image`` (:meth:`ImageFit.reason`, for one model)."""
    return ImageFit(image, axes=axes, channels=channels, max_pixels=max_pixels).reason(layout, model=model)


def mixed_dimensions_warning(sources: Sequence[ModelSource], image: Path | ImageFit, *, axes: str | None = None,
                             max_pixels: int | None = None) -> str | None:
    """A warning when z-stacks are ranked with 3D models and 2D models (run slice by slice) side by side.

    ``image`` is the target's first image, or its :class:`ImageFit` when the caller has one (no second read).
    On the demo zoo's 3D target such a mixed ranking of 19 nuclei models agreed poorly with the true Dice (Spearman
    0.50 for tta, 0.30 for cte-dropout over 5 seeds; none picked the best model, a 3D one), while the 3D models
    alone were ranked in their true order: the two kinds' consistency is not on one scale.
    """
    from bioimage_cte.zoo.sources import read_rdf

    kinds = {layout.spatial for layout in (input_layout(read_rdf(s)) for s in sources) if layout is not None}
    if kinds != {"yx", "zyx"}:
        return None
    fit = image if isinstance(image, ImageFit) else ImageFit(image, axes=axes, max_pixels=max_pixels)
    if not fit.is_stack:
        return None
    return ("the candidates mix 3D models and 2D models run slice by slice; their consistency is not on one scale "
            "(on the demo 3D target the mixed ranking agreed poorly with the truth), so compare the two kinds "
            "separately, e.g. with --tag 3d")
