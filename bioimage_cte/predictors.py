"""Black-box and grey-box predictors over bioimageio.core prediction pipelines.

A predictor loads one model description and creates its prediction pipeline **once**, then
runs every image through it with the model's own pre- and postprocessing. (``bioimageio.core.
predict`` reloads the model on every call, which is what makes a naive loop slow.)

- :class:`BlackBoxPredictor`: any weights format; inputs and outputs only.
- :class:`GreyBoxPredictor`: ``pytorch_state_dict`` weights; the torch network is reached through a
  model adapter handed to the pipeline (a subclass of bioimageio.core's ``PytorchModelAdapter``),
  so it can inject channel dropout at a named layer, by default the bottleneck.

Images of any size are padded (reflect) to a size the model accepts plus its halo, and cropped
back; images larger than the block budget, or larger than a model's one exact input size, are
predicted tile by tile with the halo through bioimageio.core's blocking (:mod:`bioimage_cte.tiling`).
A 2D model on a (z, y, x) stack runs slice by slice, a 3D model natively. Multi-channel models get
images with the channel axis first. Which output is scored: :mod:`bioimage_cte.readout`.

This module imports torch and bioimageio.core; import it lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from bioimageio.core import Sample, Tensor, create_prediction_pipeline
from bioimageio.core.axis import AxisId
from bioimageio.core.backends.pytorch_backend import PytorchModelAdapter
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from bioimage_cte.errors import InvalidImageError, InvalidModelError
from bioimage_cte.layers import find_perturbation_layer
from bioimage_cte.models import _check_inputs, _first_line, _raise_if_damaged, input_channels
from bioimage_cte.models import load_model as load_model  # re-exported: callers import it from here
from bioimage_cte.perturbations import FeatureDropout
from bioimage_cte.readout import Readout, choose_readout
from bioimage_cte.segmentation import Prediction
from bioimage_cte.tiling import crop, pad_centred, plan, spatial_axes, spatial_spec
from bioimage_cte.trust import CodePolicy, available_weight_formats, blackbox_weights, greybox_descr


class _Predictor:
    """Shared plumbing: axes, channels, padding, tiling, slice-wise stacks, the scored output."""

    def __init__(self, descr: v0_5.ModelDescr, pipeline, *, name: str, max_tile: int,
                 devices: Sequence[str], output_channel: str | None = None) -> None:
        self.descr = descr
        self.devices = list(devices)
        self.name = name
        self.max_tile = max_tile
        self._pipeline = pipeline
        self.readout: Readout = choose_readout(descr, output_channel=output_channel, name=name)
        self.spatial = spatial_axes(descr)
        self.in_channels = input_channels(descr)
        self._input_id = MemberId(str(descr.inputs[0].id))
        self._output_id = MemberId(self.readout.tensor)
        self._specs = [spatial_spec(descr, a, output_id=self.readout.tensor) for a in self.spatial]
        self._in_axes = [str(a.id) for a in descr.inputs[0].axes]
        self._channel_id = next((str(a.id) for a in descr.inputs[0].axes if isinstance(a, v0_5.ChannelAxis)), None)
        if pipeline is not None and descr.inputs[0].pad is None:
            # tiles reflect the image border, as the single padded pass does (bioimageio.core's default is
            # symmetric): then tiled and untiled predictions agree
            pipeline.pad_mode = {**pipeline.pad_mode, self._input_id: "reflect"}

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
            return dataclasses.replace(self.readout.prediction(self._run(image)), volumetric=len(self.spatial) == 3)
        return self.readout.prediction(out)

    def _run(self, image: np.ndarray) -> np.ndarray:
        """The scored output tensor, channel axis first, for one input of the model's own dimensionality."""
        todo = plan(image.shape[-len(self.spatial):], self._specs, budget=self.max_tile ** 2)
        sample = self._sample(pad_centred(image.astype(np.float32, copy=False), todo.pad))
        if todo.blocked:
            block = {AxisId(a): n for a, n in zip(self.spatial, todo.sizes, strict=True)}
            out = self._pipeline.predict_sample_with_fixed_blocking(sample, {self._input_id: block})
        else:
            out = self._pipeline.predict_sample_without_blocking(sample, skip_input_padding=True,
                                                                 skip_output_cropping=True)
        return crop(self._as_array(out), todo.pad)

    def _sample(self, image: np.ndarray) -> Sample:
        dims = ((self._channel_id,) if self.in_channels > 1 else ()) + tuple(self.spatial)
        tensor = Tensor(image, dims=dims).transpose(self._in_axes, missing_dims="expand")
        return Sample(members={self._input_id: tensor}, stat={}, id="image")

    def _as_array(self, sample: Sample) -> np.ndarray:
        data = sample.members[self._output_id].data
        spatial = [d for d in data.dims if str(d) in ("z", "y", "x")]
        arr = data.transpose(*[d for d in data.dims if d not in spatial], *spatial).values
        return arr.reshape((-1,) + arr.shape[arr.ndim - len(spatial):])


class BlackBoxPredictor(_Predictor):
    """Predict through a model's own bioimageio pipeline; inputs and outputs only.

    Parameters
    ----------
    descr : ModelDescr
        A loaded, checked model description (see :func:`load_model`).
    name : str
        Display name used in error messages.
    weight_format : str, optional
        Weights format to use; default: bioimageio.core's priority order among those present.
    devices : sequence of str
        Torch devices, e.g. ``["cpu"]`` or ``["cuda:0"]``.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels (voxels, in 3D) are predicted tile by
        tile, in blocks of at most that many.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.readout.choose_readout`); default: chosen from
        the output's names.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted libraries only, see :mod:`bioimage_cte.trust`);
        ``pytorch_state_dict`` weights whose architecture may not run are replaced by torchscript or onnx.
    """

    def __init__(self, descr: v0_5.ModelDescr, *, name: str = "model", weight_format: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                 code_policy: CodePolicy | None = None, output_channel: str | None = None) -> None:
        _check_inputs(descr, name)  # before any package code or weights are loaded
        descr, self.weight_format = blackbox_weights(descr, weight_format, code_policy or CodePolicy(), name=name)
        try:
            pipeline = create_prediction_pipeline(descr, devices=list(devices), weights_format=self.weight_format)
        except Exception as e:
            source = getattr(getattr(descr.weights, self.weight_format or "", None), "source", "a weights file")
            _raise_if_damaged(e, name=name, source=source)
            raise InvalidModelError(f"{name}: could not load the model ({_first_line(e)}); check its weights "
                                    "with 'bioimageio test'") from e
        super().__init__(descr, pipeline, name=name, max_tile=max_tile, devices=devices,
                         output_channel=output_channel)


class _DropoutAdapter(PytorchModelAdapter):
    """bioimageio.core's torch adapter plus a forward hook that applies channel dropout at one layer."""

    def __init__(self, descr: v0_5.ModelDescr, *, layer: str | None, devices: Sequence[str]) -> None:
        self.requested_layer = layer
        self.layer: str | None = None
        self.perturbation: FeatureDropout | None = None
        self._mask: torch.Tensor | None = None
        self._descr = descr
        self._hooks: list[Any] = []
        self._net: torch.nn.Module | None = None
        super().__init__(descr, devices=list(devices))

    def _init_model_on_device(self, device: torch.device) -> torch.nn.Module:
        self._net = super()._init_model_on_device(device)
        if self.requested_layer is not None:
            self._attach(self.requested_layer)
        return self._net

    def _attach(self, layer: str) -> None:
        modules = dict(self._net.named_modules())
        if layer not in modules:
            raise InvalidModelError(f"layer {layer!r} not found; layers are: {', '.join(list(modules)[1:20])} ...")
        self.layer = layer
        self._hooks.append(modules[layer].register_forward_hook(self._hook))

    def remove_hooks(self) -> None:
        """Detach the dropout hook: it refers back to this adapter, a cycle that would keep the network (and the
        package) alive until Python's cyclic garbage collector happens to run, one dead model after another."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def set_perturbation(self, perturbation: FeatureDropout | None) -> None:
        if perturbation is not None and self.layer is None:
            # traced on first use, after a clean prediction: a model that cannot run on the images says so first
            self._attach(find_perturbation_layer(self._net, descr=self._descr))
        self.perturbation = perturbation
        self._mask = None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if self.perturbation is None or self.perturbation.p == 0.0 or not isinstance(output, torch.Tensor):
            return None  # None keeps the layer's own output object: the clean pass stays bit-identical
        if self._mask is None:
            gen = torch.Generator().manual_seed(self.perturbation.seed)
            keep = torch.rand(output.shape[1], generator=gen) >= self.perturbation.p
            self._mask = (keep.float() / (1.0 - self.perturbation.p)).view(1, -1, *([1] * (output.ndim - 2)))
        return output * self._mask.to(device=output.device, dtype=output.dtype)


class GreyBoxPredictor(_Predictor):
    """Predict with ``pytorch_state_dict`` weights and optional channel dropout at one layer.

    Parameters
    ----------
    descr : ModelDescr
        A loaded model description with ``pytorch_state_dict`` weights.
    name : str
        Display name used in error messages.
    layer : str, optional
        Module name (as in ``net.named_modules()``) to perturb; default: the bottleneck found by
        :func:`bioimage_cte.layers.find_perturbation_layer`.
    devices : sequence of str
        Torch devices.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels (voxels, in 3D) are predicted tile by
        tile, in blocks of at most that many.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.readout.choose_readout`); default: chosen from
        the output's names.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted libraries only, see :mod:`bioimage_cte.trust`);
        raises :class:`~bioimage_cte.errors.UntrustedCodeError` when the architecture may not run.
    """

    def __init__(self, descr: v0_5.ModelDescr, *, name: str = "model", layer: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                 code_policy: CodePolicy | None = None, output_channel: str | None = None) -> None:
        if descr.weights.pytorch_state_dict is None:
            raise InvalidModelError(f"{name}: grey-box access needs pytorch_state_dict weights; this model has "
                                    f"{', '.join(available_weight_formats(descr))}; use an input-perturbation "
                                    "estimator (--estimator cte-input)")
        _check_inputs(descr, name)
        descr = greybox_descr(descr, code_policy or CodePolicy(), name=name)  # before anything is imported
        try:
            self.adapter = _DropoutAdapter(descr, layer=layer, devices=devices)
            pipeline = create_prediction_pipeline(descr, model_adapter=self.adapter)
        except InvalidModelError as e:
            raise InvalidModelError(f"{name}: {e}") from e
        except Exception as e:
            # checked first: bioimageio.core words every torch.load failure as weights_only's
            _raise_if_damaged(e, name=name, source=descr.weights.pytorch_state_dict.source)
            if "weights_only" in str(e):  # bioimageio.core refused a pickle that is not a plain state dict
                raise InvalidModelError(
                    f"{name}: {descr.weights.pytorch_state_dict.source} is not a plain state dict (torch.load with "
                    "weights_only=True refused it, nothing in it ran); save only net.state_dict() as the weights"
                ) from e
            raise InvalidModelError(f"{name}: could not load the torch network ({_first_line(e)})") from e
        super().__init__(descr, pipeline, name=name, max_tile=max_tile, devices=devices,
                         output_channel=output_channel)

    @property
    def layer(self) -> str | None:
        return self.adapter.layer

    def close(self) -> None:
        """Release the model; without the hook the network is freed as soon as the predictor is dropped."""
        super().close()
        self.adapter.remove_hooks()

    @contextlib.contextmanager
    def perturbed(self, perturbation: FeatureDropout) -> Iterator[None]:
        """Within this block every prediction runs with ``perturbation`` at the hooked layer."""
        self.adapter.set_perturbation(perturbation)
        try:
            yield
        finally:
            self.adapter.set_perturbation(None)


def make_predictor(descr: v0_5.ModelDescr, *, name: str, greybox: bool, weight_format: str | None = None,
                   layer: str | None = None, devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                   code_policy: CodePolicy | None = None, output_channel: str | None = None):
    """A grey-box predictor for the weights :mod:`bioimage_cte.weights` chooses, else a :class:`BlackBoxPredictor`."""
    from bioimage_cte import graph_greybox, weights

    common = dict(name=name, weight_format=weight_format, devices=devices, max_tile=max_tile, code_policy=code_policy,
                  output_channel=output_channel)
    if greybox:
        return graph_greybox.make_greybox_predictor(descr, layer=layer, **common)
    weights.check_blackbox_runtime(descr, weight_format, name=name)
    return weights.record_blackbox(BlackBoxPredictor(descr, **common), descr, weight_format)
