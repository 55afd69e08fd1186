"""What every predictor shares: axes, channels, padding, tiling, slice-wise stacks and the scored output.

A predictor holds one model's bioimageio.core prediction pipeline, created **once** (``bioimageio.core.predict``
reloads the model on every call, which is what makes a naive loop slow), and runs every image through it with
the model's own pre- and postprocessing. Images of any size are padded (reflect) to a size the model accepts plus
its halo, and cropped back; images larger than the block budget, or larger than a model's one exact input size,
are predicted tile by tile with the halo through bioimageio.core's blocking (:mod:`bioimage_cte.predict.tiling`).
A 2D model on a (z, y, x) stack runs slice by slice, a 3D model natively. Multi-channel models get images with the
channel axis first. Which output is scored: :mod:`bioimage_cte.zoo.readout`.

:class:`GreyBox` adds what the grey-box adapters share: a feature perturbation for the duration of a block.
The adapters themselves (:mod:`~bioimage_cte.predict.blackbox`, :mod:`~bioimage_cte.predict.torch_greybox`,
:mod:`~bioimage_cte.predict.onnx_greybox`) are built by :func:`bioimage_cte.predict.factory.make_predictor`.

This module imports bioimageio.core; import it lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from bioimageio.core import Sample, Tensor
from bioimageio.core.axis import AxisId
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.segmentation import Prediction, read_out
from bioimage_cte.predict.tiling import (
    SpatialSpec,
    crop,
    crop_output,
    output_geometry,
    pad_centred,
    plan,
    spatial_axes,
    spatial_spec,
)
from bioimage_cte.predict.views import (
    ViewPlan,
    dihedral,
    map_back,
    plan_views,
    sigmoids,
    view_pad,
    view_statistics,
    zero_mean_unit_variance,
)
from bioimage_cte.zoo.models import input_channels
from bioimage_cte.zoo.readout import Readout, choose_readout
from bioimage_cte.zoo.weights import WeightChoice

__all__ = ["GreyBox", "Predictor"]


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One model input, padded and preprocessed once for all its views."""

    #: the preprocessed input in the model's axes (batch 1), as bioimageio.core hands it to the model adapter
    tensor: Tensor
    #: the sample statistics preprocessing computed (the output sample carries them, as in bioimageio.core)
    stat: dict
    #: the centred padding, (before, after) per spatial axis
    pad: tuple[tuple[int, int], ...]
    #: the spatial shape before padding
    shape: tuple[int, ...]
    #: the padded input before preprocessing (float32, the model's axes), for views that recompute its statistics
    raw: np.ndarray | None = None
    #: whether the views are bioimageio.core's preprocessed views bit for bit (False: through the pipeline)
    exact: bool = True


def _flip(array: np.ndarray, dims: Sequence[Any], k: int) -> np.ndarray:
    """View ``k`` of an array in the model's axes ``dims`` (a numpy view: flips and turns of ``y`` and ``x``)."""
    names = [str(d) for d in dims]
    return dihedral(array, k, axes=(names.index("y"), names.index("x")))


def _channels_first(array: np.ndarray, dims: Sequence[Any]) -> np.ndarray:
    """An output array with every non-spatial axis (batch, channel) merged into the first, the spatial ones after."""
    spatial = [i for i, d in enumerate(dims) if str(d) in ("z", "y", "x")]
    arr = array.transpose(*[i for i in range(len(dims)) if i not in spatial], *spatial)
    return arr.reshape((-1,) + arr.shape[arr.ndim - len(spatial):])


def _shares(prepared: _Prepared, k: int, specs: Sequence[SpatialSpec], max_tile: int) -> bool:
    """Whether view ``k`` of the padded input is the padded view: it is padded as the clean image turned by ``k``
    (centred padding that a quarter turn or a flip maps onto itself) and not tiled, and its preprocessing is
    bioimageio.core's bit for bit."""
    if k and not prepared.exact:
        return False
    shape = prepared.shape
    view = (*shape[:-2], shape[-1], shape[-2]) if k % 2 else shape
    todo = plan(view, specs, budget=max_tile ** 2)
    return not todo.blocked and todo.pad == view_pad(prepared.pad, k)


class Predictor:
    """Shared plumbing: axes, channels, padding, tiling, slice-wise stacks, the scored output."""

    def __init__(self, descr: v0_5.ModelDescr, pipeline, *, weights: WeightChoice, name: str, max_tile: int,
                 devices: Sequence[str], output_channel: str | None = None) -> None:
        self.descr = descr
        #: the weights it runs with, and why (recorded in the ranking JSON)
        self.weights = weights
        self.devices = list(devices)
        self.name = name
        self.max_tile = max_tile
        self._pipeline = pipeline
        self.readout: Readout = choose_readout(descr, output_channel=output_channel, name=name)
        self.spatial = spatial_axes(descr)
        self.in_channels = input_channels(descr)
        #: a model with several inputs: the image channels fed to them, in input order (set by make_predictor)
        self.feed: tuple[int, ...] | None = None
        # (member id, channels, axes, channel axis id) per input: a multi-input model gets consecutive channels each
        self._inputs = [(MemberId(str(t.id)),
                         next((len(a.channel_names) for a in t.axes if isinstance(a, v0_5.ChannelAxis)), 1),
                         [str(a.id) for a in t.axes],
                         next((str(a.id) for a in t.axes if isinstance(a, v0_5.ChannelAxis)), None))
                        for t in descr.inputs]
        self._output_id = MemberId(self.readout.tensor)
        self._specs = [spatial_spec(descr, a, output_id=self.readout.tensor) for a in self.spatial]
        #: input pixels per output pixel, per spatial axis (2.0: the scored output has half the input's resolution)
        self.scale, self._offset = output_geometry(descr, self.readout.tensor)
        self._input_id = self._inputs[0][0]
        #: how the views of an image are predicted (decided once: :mod:`bioimage_cte.predict.views`)
        self.views: ViewPlan = plan_views(descr, devices=self.devices, has_adapter=self._adapter is not None)
        if self.views.shared and (len(self._inputs) > 1 or any(s != 1 for s in self.scale) or any(self._offset)):
            # the shared path feeds one input and crops on the input's grid
            self.views = ViewPlan(False, False, "each view through the pipeline: several inputs, or an output on "
                                                "another grid than the input's")
        self._recent: list[tuple[np.ndarray, list[_Prepared] | None]] = []
        self._sigmoids = sigmoids(descr, self.readout.tensor)
        self._statistics = view_statistics(descr)
        if pipeline is not None:
            # tiles reflect the image border, as the single padded pass does (bioimageio.core's default is
            # symmetric): then tiled and untiled predictions agree
            pipeline.pad_mode = {**pipeline.pad_mode, **{MemberId(str(t.id)): "reflect" for t in descr.inputs
                                                         if getattr(t, "pad", None) is None}}

    @property
    def has_boundary(self) -> bool:
        return self.readout.scored == "foreground" and (self.readout.boundary is not None or
                                                        bool(self.readout.affinities))

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the model."""
        pipeline, self._pipeline = self._pipeline, None
        self._recent = []
        # bioimageio's unload() runs a full gc.collect() (0.4 s a model); only GPU memory needs it now.
        if pipeline is not None and any(str(d).startswith(("cuda", "mps")) for d in self.devices):
            with contextlib.suppress(Exception):
                pipeline.unload()

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one image: (y, x) or a (z, y, x) stack; with the channel axis first for multi-channel models.

        A 2D model runs on a stack slice by slice; a 3D model runs on it natively, tiled when it is larger
        than the block budget (``max_tile ** 2`` voxels).
        """
        inputs, stacked = self._model_inputs(image)
        prepared = self._prepared(image, inputs)
        outs = [self._run(x) for x in inputs] if prepared is None else [self._forward(p, 0) for p in prepared]
        return self._read(outs, stacked)

    def predict_views(self, image: np.ndarray, transforms: Sequence[int]) -> list[Prediction]:
        """The predictions of the views ``dihedral(image, k)`` for each k of ``transforms``, mapped back to the
        image's frame (their maps are views of the arrays, not copies).

        When the model's preprocessing commutes with the views (:attr:`views`) and the image is not tiled, the
        image is padded and preprocessed once (shared with :meth:`predict` of the same image object) and each view
        is taken from it (flipped; a zero-mean-unit-variance view normalised by its own mean and std), bit for bit
        what bioimageio.core's pipeline would feed the model, then run through the model's adapter and its own
        postprocessing. Otherwise each view is predicted as an image of its own.
        """
        inputs, stacked = self._model_inputs(image)
        prepared = self._prepared(image, inputs)
        if prepared is None or not all(_shares(p, k, self._specs, self.max_tile) for p in prepared
                                       for k in transforms):
            return [map_back(self.predict(np.ascontiguousarray(dihedral(image, k))), k) for k in transforms]
        per_input = [self._forward_views(p, transforms) for p in prepared]
        return [map_back(self._read([outs[i] for outs in per_input], stacked), k) for i, k in enumerate(transforms)]

    def _model_inputs(self, image: np.ndarray) -> tuple[list[np.ndarray], bool]:
        """The inputs of the model's own dimensionality ``image`` is predicted as (its slices, for a 2D model on a
        stack: then True), after checking that the model can take it."""
        c = self.in_channels
        ndim = image.ndim - (c > 1)
        if c > 1 and (ndim not in (2, 3) or image.shape[0] != c):
            raise InvalidImageError(f"{self.name}: the model takes {c} input channels but the image has shape "
                                    f"{image.shape}; pass images with {c} channels (--channels to select them)")
        if ndim not in (2, 3):
            raise InvalidImageError(f"{self.name}: image of shape {image.shape}; pass (y, x) images or (z, y, x) "
                                    "stacks (use --axes to say which axes the files have)")
        if ndim == 2 and len(self.spatial) == 3:
            raise InvalidImageError(f"{self.name}: 3D model (input axes {''.join(self.spatial)}) but the image is "
                                    f"2D {image.shape[-2:]}; rank 3D models on z-stacks (--axes zyx)")
        if ndim == 3 and len(self.spatial) == 2:
            z = image.ndim - 3
            return [np.take(image, i, axis=z) for i in range(image.shape[z])], True
        return [image], False

    def _read(self, outs: list[np.ndarray], stacked: bool) -> Prediction:
        if stacked:
            return read_out(self.readout, np.stack(outs, axis=1))
        # a 3D model saw the whole volume: it is scored over voxels and its objects labelled in 3D
        return dataclasses.replace(read_out(self.readout, outs[0]), volumetric=len(self.spatial) == 3)

    def _run(self, image: np.ndarray) -> np.ndarray:
        """The scored output tensor, channel axis first, for one input of the model's own dimensionality."""
        todo = plan(image.shape[-len(self.spatial):], self._specs, budget=self.max_tile ** 2)
        sample = self._sample(pad_centred(image.astype(np.float32, copy=False), todo.pad))
        if todo.blocked:
            block = {AxisId(a): n for a, n in zip(self.spatial, todo.sizes, strict=True)}
            out = self._pipeline.predict_sample_with_fixed_blocking(sample, {m: block for m, *_ in self._inputs})
        else:
            out = self._pipeline.predict_sample_without_blocking(sample, skip_input_padding=True,
                                                                 skip_output_cropping=True)
        return crop_output(self._as_array(out), todo.pad, image.shape[-len(self.spatial):], self.scale,
                           self._offset)

    def _prepared(self, image: np.ndarray, inputs: list[np.ndarray]) -> list[_Prepared] | None:
        """``image``'s inputs padded and preprocessed once, or None (the model's views do not share them, or the
        image is tiled). The last two images are kept, by identity: the clean prediction, a perturbed one and the
        views of one image then preprocess it once."""
        if not self.views.shared:
            return None
        for seen, prepared in self._recent:
            if seen is image:
                return prepared
        parts = [self._prepare(x) for x in inputs]
        result = None if any(p is None for p in parts) else [p for p in parts if p is not None]
        self._recent = [(image, result), *self._recent[:1]]
        return result

    def _prepare(self, image: np.ndarray) -> _Prepared | None:
        """Pad and preprocess one model input as bioimageio.core's pipeline does before its forward pass."""
        todo = plan(image.shape[-len(self.spatial):], self._specs, budget=self.max_tile ** 2)
        if todo.blocked:
            return None
        sample = self._sample(pad_centred(image.astype(np.float32, copy=False), todo.pad))
        raw = sample.members[self._input_id]
        self._pipeline.apply_preprocessing(sample)
        tensor = sample.members[self._input_id]
        prepared = _Prepared(tensor, sample.stat, todo.pad, image.shape[-len(self.spatial):])
        if self._statistics is None:
            return prepared
        # each view recomputes its mean and std (sums, which depend on the order of the pixels); numpy's operations
        # must be bioimageio.core's: checked on the clean image, else the views go through the pipeline
        values = np.ascontiguousarray(raw.data.values, dtype=np.float32)
        exact = raw.dims == tensor.dims and np.array_equal(self._normalise(values, tensor.dims), tensor.data.values)
        return dataclasses.replace(prepared, raw=values, exact=exact)

    def _normalise(self, values: np.ndarray, dims: Sequence[Any]) -> np.ndarray:
        names, eps = self._statistics or ((), 0.0)
        return zero_mean_unit_variance(values, [[str(d) for d in dims].index(a) for a in names], eps)

    def _view_input(self, prepared: _Prepared, k: int) -> np.ndarray:
        """The preprocessed input of view ``k``: a view of the preprocessed image, or the view normalised by its
        own statistics."""
        dims = prepared.tensor.dims
        if prepared.raw is None:
            return np.ascontiguousarray(_flip(prepared.tensor.data.values, dims, k))
        return self._normalise(np.ascontiguousarray(_flip(prepared.raw, dims, k)), dims)

    def _forward(self, prepared: _Prepared, k: int) -> np.ndarray:
        """View ``k`` of a prepared input through the model and its postprocessing, cropped (in the view's frame)."""
        tensor = prepared.tensor if k == 0 else Tensor(self._view_input(prepared, k), dims=prepared.tensor.dims)
        return self._postprocess(self._adapter.forward({self._input_id: tensor}), prepared, k)

    def _forward_views(self, prepared: _Prepared, transforms: Sequence[int]) -> list[np.ndarray]:
        """:meth:`_forward` for each view; as one batch per input shape when :attr:`views` says so."""
        if not self.views.batched:
            return [self._forward(prepared, k) for k in transforms]
        arrays = [self._view_input(prepared, k) for k in transforms]
        dims = prepared.tensor.dims
        batch = [str(d) for d in dims].index("batch")
        outs: dict[int, np.ndarray] = {}
        for shape in dict.fromkeys(a.shape for a in arrays):
            group = [i for i, a in enumerate(arrays) if a.shape == shape]
            stacked = Tensor(np.concatenate([arrays[i] for i in group], axis=batch), dims=dims)
            members = self._adapter.forward({self._input_id: stacked})
            for j, i in enumerate(group):
                one = {m: t[{AxisId("batch"): slice(j, j + 1)}] for m, t in members.items() if t is not None}
                outs[i] = self._postprocess(one, prepared, transforms[i])
        return [outs[i] for i in range(len(transforms))]

    def _postprocess(self, members: dict, prepared: _Prepared, k: int) -> np.ndarray:
        """The scored output after the model's postprocessing, channels first, cropped (in view ``k``'s frame)."""
        scored = members[self._output_id]
        if self._sigmoids is not None and scored.data.dtype == np.float32:
            out = scored.data.values
            for _ in range(self._sigmoids):  # bioimageio.core's Sigmoid, operation for operation
                out = 1.0 / (1.0 + np.exp(-out))
            return crop(_channels_first(out, scored.dims), view_pad(prepared.pad, k))
        # as bioimageio.core's pipeline: the output sample carries the input's statistics (a copy: each view adds
        # its output's own)
        sample = Sample(members={m: t for m, t in members.items() if t is not None}, stat=dict(prepared.stat),
                        id="image")
        self._pipeline.apply_postprocessing(sample)
        return crop(self._as_array(sample), view_pad(prepared.pad, k))

    @property
    def _adapter(self) -> Any:
        # bioimageio.core 0.11 keeps the model adapter private; the shared path calls its forward on prepared tensors
        return getattr(self._pipeline, "_adapter", None)

    def _sample(self, image: np.ndarray) -> Sample:
        members, start = {}, 0
        for member, channels, axes, channel_id in self._inputs:
            # a multi-input model's inputs take consecutive channels of the fed image (its --inputs order)
            part = image if len(self._inputs) == 1 else image[start:start + channels]
            if len(self._inputs) > 1 and channels == 1:
                part = part[0]
            start += channels
            dims = ((channel_id or "channel",) if channels > 1 else ()) + tuple(self.spatial)
            members[member] = Tensor(part, dims=dims).transpose(axes, missing_dims="expand")
        return Sample(members=members, stat={}, id="image")

    def _as_array(self, sample: Sample) -> np.ndarray:
        data = sample.members[self._output_id].data
        return _channels_first(data.values, data.dims)


class GreyBox(Predictor):
    """A predictor whose adapter can perturb the network's features (``adapter.set_perturbation``)."""

    adapter: Any

    @property
    def layer(self) -> str | None:
        """The layer (torch module name, or ONNX tensor) the perturbation acts on."""
        return self.adapter.layer

    def close(self) -> None:
        """Release the model; without its hook the network is freed as soon as the predictor is dropped."""
        super().close()
        self.adapter.remove_hooks()

    @contextlib.contextmanager
    def perturbed(self, perturbation: FeatureDropout) -> Iterator[None]:
        """Within this block every prediction runs with ``perturbation`` at the perturbed layer."""
        self.adapter.set_perturbation(perturbation)
        try:
            yield
        finally:
            self.adapter.set_perturbation(None)
