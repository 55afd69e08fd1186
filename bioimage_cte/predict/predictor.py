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
from bioimage_cte.predict.tiling import crop_output, output_geometry, pad_centred, plan, spatial_axes, spatial_spec
from bioimage_cte.zoo.models import input_channels
from bioimage_cte.zoo.readout import Readout, choose_readout
from bioimage_cte.zoo.weights import WeightChoice

__all__ = ["GreyBox", "Predictor"]


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
        # bioimageio's unload() runs a full gc.collect() (0.4 s a model); only GPU memory needs it now.
        if pipeline is not None and any(str(d).startswith(("cuda", "mps")) for d in self.devices):
            with contextlib.suppress(Exception):
                pipeline.unload()

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one image: (y, x) or a (z, y, x) stack; with the channel axis first for multi-channel models.

        A 2D model runs on a stack slice by slice; a 3D model runs on it natively, tiled when it is larger
        than the block budget (``max_tile ** 2`` voxels).
        """
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
            out = np.stack([self._run(np.take(image, i, axis=z)) for i in range(image.shape[z])], axis=1)
        else:
            # a 3D model saw the whole volume: it is scored over voxels and its objects labelled in 3D
            return dataclasses.replace(read_out(self.readout, self._run(image)), volumetric=len(self.spatial) == 3)
        return read_out(self.readout, out)

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
        spatial = [d for d in data.dims if str(d) in ("z", "y", "x")]
        arr = data.transpose(*[d for d in data.dims if d not in spatial], *spatial).values
        return arr.reshape((-1,) + arr.shape[arr.ndim - len(spatial):])


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
