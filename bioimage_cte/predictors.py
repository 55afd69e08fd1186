"""Black-box and grey-box predictors over bioimageio.core prediction pipelines.

A predictor loads one model description and creates its prediction pipeline **once**, then
runs every image through it with the model's own pre- and postprocessing. (``bioimageio.core.
predict`` reloads the model on every call, which is what makes a naive loop slow.)

- :class:`BlackBoxPredictor`: any weights format; inputs and outputs only.
- :class:`GreyBoxPredictor`: ``pytorch_state_dict`` weights; the torch network is reached through a
  model adapter handed to the pipeline (a subclass of bioimageio.core's ``PytorchModelAdapter``),
  so it can inject channel dropout at a named layer, by default the bottleneck.

Images of any size are padded (reflect) to a size the model accepts plus its halo, and cropped
back; images larger than ``max_tile`` are predicted tile by tile with the halo through
bioimageio.core's blocking. A 2D model on a (z, y, x) stack runs slice by slice.

This module imports torch and bioimageio.core; import it lazily.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from bioimageio.core import Sample, Tensor, create_prediction_pipeline
from bioimageio.core.backends.pytorch_backend import PytorchModelAdapter
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from bioimage_cte.archives import DEFAULT_MAX_ENTRY_BYTES
from bioimage_cte.errors import InvalidImageError, InvalidModelError
from bioimage_cte.perturbations import FeatureDropout
from bioimage_cte.segmentation import Prediction
from bioimage_cte.trust import CodePolicy, available_weight_formats, blackbox_weights, greybox_descr

FOREGROUND_NAMES = ("foreground", "fg", "mask", "prob", "probability", "probabilities", "semantic", "nuclei")
BOUNDARY_NAMES = ("boundary", "boundaries", "contour", "contours", "edge", "edges", "border")


# bioimageio.spec parses every rdf.yaml with one shared YAML parser: two threads loading at once corrupt each other.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class _SpatialSpec:
    minimum: int
    step: int
    halo: int


def load_model(location: str, *, perform_io_checks: bool = True,
               max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> v0_5.ModelDescr:
    """Load and check a model description: a v0.5 (or convertible) 2D segmentation model.

    Raises :class:`~bioimage_cte.errors.InvalidModelError` naming ``location`` and the fix; ``max_entry_bytes``
    is the largest unpacked member of a package zip (:func:`bioimage_cte.archives.check_zip`).
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_4

    from bioimage_cte.rdf_checks import precheck_package

    # path traversal, symlinks, oversized entries, YAML bombs, non-model RDFs: before bioimageio opens it
    precheck_package(location, max_entry_bytes=max_entry_bytes)
    try:
        with _LOAD_LOCK:
            descr = load_description(location, perform_io_checks=perform_io_checks, format_version="latest")
    except Exception as e:  # unreadable YAML, broken zip, missing file: bioimageio raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InvalidModelError(f"{location}: cannot be read as a bioimageio package ({type(e).__name__}: "
                                f"{first}); check that it is a valid rdf.yaml or package zip") from e
    if isinstance(descr, InvalidDescr):
        summary = descr.validation_summary
        first = next((e for d in summary.details for e in d.errors), None)
        reason = f"{'.'.join(map(str, first.loc)) or 'rdf'}: {' '.join(first.msg.split())}" if first else summary.status
        fix = f"check it with 'bioimageio validate-format {location}'"
        if "SHA256 mismatch" in reason:
            fix = "a file was changed or damaged after packaging; get the package again"
        raise InvalidModelError(f"{location}: not a valid bioimageio RDF ({reason}); {fix}")
    if descr.type != "model":
        raise InvalidModelError(f"{location}: RDF of type {descr.type!r}, not a model; pass model packages only")
    if isinstance(descr, v0_4.ModelDescr):
        raise InvalidModelError(f"{location}: model format {descr.format_version} could not be converted to 0.5; "
                                "update it with 'bioimageio update-format'")
    check_segmentation_model(descr, location=location)
    _check_inputs(descr, location)
    return descr


def check_segmentation_model(descr: v0_5.ModelDescr, *, location: str) -> None:
    """Raise unless the model maps one image to a same-sized probability map (a segmentation model)."""
    if len(descr.inputs) != 1:
        raise InvalidModelError(f"{location}: model has {len(descr.inputs)} inputs; bioimage-cte ranks "
                                "single-input segmentation models")
    in_axes = {str(a.id) for a in descr.inputs[0].axes}
    out = descr.outputs[0]
    out_axes = {str(a.id) for a in out.axes}
    if not {"y", "x"} <= in_axes or not {"y", "x"} <= out_axes:
        raise InvalidModelError(f"{location}: input axes {sorted(in_axes)} / output axes {sorted(out_axes)} "
                                "have no y and x; not an image segmentation model")
    for axis in out.axes:
        if str(axis.id) in "yx" and not isinstance(axis.size, v0_5.SizeReference):
            if getattr(axis, "scale", 1.0) not in (1, 1.0):
                raise InvalidModelError(f"{location}: output axis {axis.id} is rescaled; not a segmentation map")
    ops = {type(p).__name__ for p in out.postprocessing}
    tags = {t.lower() for t in descr.tags}
    if not ({"SigmoidDescr", "SoftmaxDescr", "BinarizeDescr"} & ops or any("segmentation" in t for t in tags)):
        raise InvalidModelError(
            f"{location}: output {out.id!r} is neither sigmoid/softmax/binarize-postprocessed nor tagged "
            "'segmentation'; bioimage-cte ranks models whose output is a foreground probability map")


def _check_inputs(descr: v0_5.ModelDescr, name: str) -> None:
    """Raise unless the model takes single-channel 2D images (checked before the model is loaded)."""
    axes = [str(a.id) for a in descr.inputs[0].axes]
    n_channels = next((len(a.channel_names) for a in descr.inputs[0].axes if isinstance(a, v0_5.ChannelAxis)), 1)
    if n_channels != 1:
        raise InvalidModelError(f"{name}: model expects {n_channels} input channels; bioimage-cte feeds "
                                "single-channel (grey) images, so rank models made for one channel")
    if "z" in axes:
        raise InvalidModelError(f"{name}: 3D model (input axes {axes}); bioimage-cte ranks 2D models, which it "
                                "runs slice by slice on stacks")


def _channel_index(descr: v0_5.ModelDescr, names: Sequence[str]) -> int | None:
    for axis in descr.outputs[0].axes:
        if isinstance(axis, v0_5.ChannelAxis):
            lowered = [str(c).lower() for c in axis.channel_names]
            return next((i for i, c in enumerate(lowered) if c in names), None)
    return None


def _spatial_spec(descr: v0_5.ModelDescr, axis_id: str) -> _SpatialSpec:
    axis = next(a for a in descr.inputs[0].axes if str(a.id) == axis_id)
    halo = max((getattr(a, "halo", 0) for a in descr.outputs[0].axes if str(a.id) == axis_id), default=0)
    size = axis.size
    if isinstance(size, v0_5.ParameterizedSize):
        return _SpatialSpec(size.min, size.step, halo)
    if isinstance(size, int):
        return _SpatialSpec(size, 0, halo)
    raise InvalidModelError(f"input axis {axis_id} has a size of type {type(size).__name__}; "
                            "bioimage-cte needs a fixed or parameterized size")


def pad_to_valid(image: np.ndarray, specs: Sequence[_SpatialSpec], *, name: str = "model"):
    """Reflect-pad a (y, x) image, centred, to the smallest size the model accepts plus its halo.

    Returns the padded image and the offset of the original image in it, for cropping back.
    """
    sizes = [_valid_size(n, spec) for n, spec in zip(image.shape, specs, strict=True)]
    for n, size, a, spec in zip(image.shape, sizes, "yx", specs, strict=True):
        if size < n:
            raise InvalidImageError(f"{name}: image axis {a} has {n} px but the model takes exactly "
                                    f"{spec.minimum}; crop or tile the images to that size")
    before = tuple((s - n) // 2 for s, n in zip(sizes, image.shape, strict=True))
    pad = [(b, s - n - b) for b, s, n in zip(before, sizes, image.shape, strict=True)]
    return np.pad(image, pad, mode="reflect" if min(image.shape) > max(max(pad)) else "symmetric"), before


def _valid_size(n: int, spec: _SpatialSpec) -> int:
    """Smallest valid network input size that holds ``n`` pixels plus the halo on both sides."""
    need = n + 2 * spec.halo
    if spec.step == 0:
        return spec.minimum
    k = max(0, -(-(need - spec.minimum) // spec.step))
    return spec.minimum + k * spec.step


class _Predictor:
    """Shared plumbing: axes, padding, tiling, slice-wise stacks."""

    def __init__(self, descr: v0_5.ModelDescr, pipeline, *, name: str, max_tile: int,
                 devices: Sequence[str]) -> None:
        self.descr = descr
        self.devices = list(devices)
        self.name = name
        self.max_tile = max_tile
        self._pipeline = pipeline
        self._input_id = MemberId(str(descr.inputs[0].id))
        self._output_id = MemberId(str(descr.outputs[0].id))
        self._spec = {a: _spatial_spec(descr, a) for a in "yx"}
        self._fg = _channel_index(descr, FOREGROUND_NAMES) or 0
        self._bd = _channel_index(descr, BOUNDARY_NAMES)
        self._in_axes = [str(a.id) for a in descr.inputs[0].axes]

    @property
    def has_boundary(self) -> bool:
        return self._bd is not None

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
        """Predict one (y, x) image or, slice by slice, one (z, y, x) stack."""
        if image.ndim == 3:
            slices = [self._predict_2d(s) for s in image]
            boundary = None if slices[0].boundary is None else np.stack([s.boundary for s in slices])
            return Prediction(np.stack([s.foreground for s in slices]), boundary)
        if image.ndim != 2:
            raise InvalidImageError(f"{self.name}: image of shape {image.shape}; pass (y, x) images or (z, y, x) "
                                    "stacks (use --axes to say which axes the files have)")
        return self._predict_2d(image)

    def _predict_2d(self, image: np.ndarray) -> Prediction:
        if max(image.shape) > self.max_tile:
            out = self._run_blocked(image.astype(np.float32))
        else:
            out = self._run_padded(image.astype(np.float32))
        probs = out.astype(np.float32)
        return Prediction(probs[self._fg], None if self._bd is None else probs[self._bd])

    def _run_padded(self, image: np.ndarray) -> np.ndarray:
        padded, before = pad_to_valid(image, (self._spec["y"], self._spec["x"]), name=self.name)
        result = self._forward(padded)
        return result[:, before[0] : before[0] + image.shape[0], before[1] : before[1] + image.shape[1]]

    def _sample(self, image: np.ndarray) -> Sample:
        dims = tuple(d for d in self._in_axes if d in ("batch", "channel", "y", "x"))
        tensor = Tensor(image, dims=("y", "x")).transpose(list(dims), missing_dims="expand")
        return Sample(members={self._input_id: tensor}, stat={}, id="image")

    def _forward(self, padded: np.ndarray) -> np.ndarray:
        out = self._pipeline.predict_sample_without_blocking(
            self._sample(padded), skip_input_padding=True, skip_output_cropping=True
        )
        return self._as_cyx(out)

    def _run_blocked(self, image: np.ndarray) -> np.ndarray:
        # Blocks as large as max_tile allows: bioimageio.core's default blocks are small, and every block
        # recomputes its halo.
        spec = self._spec["y"]
        ns = max(0, (self.max_tile - spec.minimum) // spec.step) if spec.step else 0
        out = self._pipeline.predict_sample_with_blocking(self._sample(image), ns=ns)
        return self._as_cyx(out)

    def _as_cyx(self, sample: Sample) -> np.ndarray:
        data = sample.members[self._output_id].data
        keep = [d for d in ("channel", "y", "x") if d in data.dims]
        arr = data.transpose(*[d for d in data.dims if d not in keep], *keep).values
        arr = arr.reshape((-1,) + arr.shape[-2:]) if "channel" in keep else arr.reshape((1,) + arr.shape[-2:])
        return arr


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
        Images with a side longer than this are predicted tile by tile.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted libraries only, see :mod:`bioimage_cte.trust`);
        ``pytorch_state_dict`` weights whose architecture may not run are replaced by torchscript or onnx.
    """

    def __init__(self, descr: v0_5.ModelDescr, *, name: str = "model", weight_format: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                 code_policy: CodePolicy | None = None) -> None:
        _check_inputs(descr, name)  # before any package code or weights are loaded
        descr, self.weight_format = blackbox_weights(descr, weight_format, code_policy or CodePolicy(), name=name)
        try:
            pipeline = create_prediction_pipeline(descr, devices=list(devices), weights_format=self.weight_format)
        except Exception as e:
            source = getattr(getattr(descr.weights, self.weight_format or "", None), "source", "a weights file")
            _raise_if_damaged(e, name=name, source=source)
            raise InvalidModelError(f"{name}: could not load the model ({_first_line(e)}); check its weights "
                                    "with 'bioimageio test'") from e
        super().__init__(descr, pipeline, name=name, max_tile=max_tile, devices=devices)


class _DropoutAdapter(PytorchModelAdapter):
    """bioimageio.core's torch adapter plus a forward hook that applies channel dropout at one layer."""

    def __init__(self, descr: v0_5.ModelDescr, *, layer: str | None, devices: Sequence[str]) -> None:
        self.requested_layer = layer
        self.layer: str | None = None
        self.perturbation: FeatureDropout | None = None
        self._mask: torch.Tensor | None = None
        self._descr = descr
        self._hooks: list[Any] = []
        super().__init__(descr, devices=list(devices))

    def _init_model_on_device(self, device: torch.device) -> torch.nn.Module:
        net = super()._init_model_on_device(device)
        modules = dict(net.named_modules())
        self.layer = self.requested_layer or find_bottleneck(net, self._descr)
        if self.layer not in modules:
            raise InvalidModelError(f"layer {self.layer!r} not found; layers are: {', '.join(list(modules)[1:20])} ...")
        self._hooks.append(modules[self.layer].register_forward_hook(self._hook))
        return net

    def remove_hooks(self) -> None:
        """Detach the dropout hook: it refers back to this adapter, a cycle that would keep the network (and the
        package) alive until Python's cyclic garbage collector happens to run, one dead model after another."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def set_perturbation(self, perturbation: FeatureDropout | None) -> None:
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


def find_bottleneck(net: torch.nn.Module, descr: v0_5.ModelDescr | None = None) -> str:
    """Name of the layer whose output is the deepest encoder output of a UNet-like network.

    A module named ``bottleneck`` wins. Otherwise one probe forward pass records every module's
    output; the bottleneck is the module that finishes last among those at the coarsest
    resolution with the most channels (hooks of a container fire after its children, so this
    picks the outermost block, e.g. ``encoders.3`` of a pytorch-3dunet UNet).
    """
    names = dict(net.named_modules())
    if "bottleneck" in names:
        return "bottleneck"
    records: list[tuple[int, int, int, str]] = []
    hooks = []
    for name, module in names.items():
        if name:
            def record(m, a, out, name=name):
                if isinstance(out, torch.Tensor) and out.ndim >= 4:
                    records.append((int(np.prod(out.shape[2:])), -out.shape[1], -len(records), name))
            hooks.append(module.register_forward_hook(record))
    side = 256
    if descr is not None:
        side = _valid_size(128, _spatial_spec(descr, "y"))
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net(torch.zeros(1, 1, side, side, device=device))
    finally:
        for h in hooks:
            h.remove()
    if not records:
        raise InvalidModelError("could not find a bottleneck layer: no 4-D feature maps; pass --layer NAME")
    return min(records)[3]


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
        :func:`find_bottleneck`.
    devices : sequence of str
        Torch devices.
    max_tile : int
        Images with a side longer than this are predicted tile by tile.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted libraries only, see :mod:`bioimage_cte.trust`);
        raises :class:`~bioimage_cte.errors.UntrustedCodeError` when the architecture may not run.
    """

    def __init__(self, descr: v0_5.ModelDescr, *, name: str = "model", layer: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                 code_policy: CodePolicy | None = None) -> None:
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
        super().__init__(descr, pipeline, name=name, max_tile=max_tile, devices=devices)

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
                   code_policy: CodePolicy | None = None):
    """A :class:`GreyBoxPredictor` if ``greybox`` else a :class:`BlackBoxPredictor`."""
    if greybox:
        return GreyBoxPredictor(descr, name=name, layer=layer, devices=devices, max_tile=max_tile,
                                code_policy=code_policy)
    return BlackBoxPredictor(descr, name=name, weight_format=weight_format, devices=devices, max_tile=max_tile,
                             code_policy=code_policy)


# what torch and zipfile say about a weights file that was cut short or damaged (rather than refused)
_DAMAGE_MARKERS = ("PytorchStreamReader failed", "unexpected EOF", "file might be corrupted", "negative seek value",
                   "truncated", "Ran out of input", "Unsupported operand")


def _raise_if_damaged(e: BaseException, *, name: str, source: Any) -> None:
    """Raise a 'corrupt or truncated' error from ``e`` when loading failed on a damaged weights file."""
    damage = _damaged_weights(e)
    if damage is not None:
        raise InvalidModelError(f"{name}: weights file {source} is corrupt or truncated ({damage}); download the "
                                "package again") from e


def _damaged_weights(e: BaseException) -> str | None:
    """The first line of the error, in ``e``'s chain, showing that a weights file is truncated or damaged; else None.

    bioimageio.core wraps every failure of ``torch.load(weights_only=True)`` in one ValueError, so
    the original error is looked up in the chain, innermost first. A pickle that ``weights_only``
    refuses ("Unsupported global") is not damage: the file is whole, only unsafe.
    """
    import pickle
    import zipfile

    chain: list[BaseException] = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(chain):
        text = str(err)
        if "Unsupported global" in text:
            return None
        if isinstance(err, zipfile.BadZipFile | EOFError) or (
            isinstance(err, RuntimeError | ValueError | pickle.UnpicklingError)
            and any(marker in text for marker in _DAMAGE_MARKERS)
        ):
            # weights_only's unpickler on bytes that are no pickle: its own line says which byte, not the first
            garbage = next((line.strip() for line in text.splitlines() if "Unsupported operand" in line), None)
            return f"{type(err).__name__}: {garbage}" if garbage else _first_line(err)
    return None


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message``: bioimageio.core's errors run over many lines."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
