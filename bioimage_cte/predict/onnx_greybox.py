"""The grey-box adapter for ``onnx`` and ``torchscript`` weights: channel dropout by rewriting an ONNX graph.

The feature tensor to perturb is found without relying on node names: one probe run of the
unmodified graph returns every intermediate 4-D tensor, and the chosen one is, as for the torch
bottleneck (:func:`bioimage_cte.predict.layers.find_perturbation_layer`), the last one produced among those at
the coarsest resolution with the most channels. The graph is then rewritten to multiply that tensor
by a per-channel mask that is a new graph **input** (:data:`MASK_INPUT`, shape ``(1, C, 1, ...)``),
so a single onnxruntime ``InferenceSession`` serves the clean pass (a mask of ones, which leaves
every value bit-identical) and every dropout mask. Masks are drawn by
:meth:`~bioimage_cte.predict.dropout.FeatureDropout.channel_mask`, exactly as the state-dict hook
draws them, so both formats of one network drop the same channels.

Feature maps are taken as channels-first (batch, channel, spatial...), as torch exports them; a graph
converted from a channels-last framework (TensorFlow) would have a spatial axis masked instead: a known
limitation, not checked here.

The graph is used through bioimageio.core's ONNX model adapter, so the model's own pre- and
postprocessing, padding and tiling stay those of :mod:`bioimage_cte.predict.predictor`.

TorchScript weights: a loaded TorchScript module runs its forward pass in C++, and torch refuses forward hooks on
it ("register_forward_hook is not supported on ScriptModules"); rewriting a TorchScript graph needs torch's private
``torch._C`` API. Instead the module is exported to ONNX in memory (:func:`torchscript_as_onnx`, the
TorchScript-based exporter, ``dynamo=False``, which accepts a ``ScriptModule``), and that graph is perturbed like
ONNX weights. Loading and exporting run no package code (a TorchScript file is a graph, loaded as black-box
prediction loads it).

``onnx`` and ``onnxruntime`` are an optional extra (``pip install 'bioimage-cte[onnx]'``): import this
module only when both are installed (:func:`bioimage_cte.zoo.weights.missing_runtime` says which is not).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
from bioimageio.core.backends.onnx_backend import ONNXModelAdapter

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.predictor import GreyBox
from bioimage_cte.zoo.models import first_line
from bioimage_cte.zoo.weights import WeightChoice

__all__ = ["MASK_INPUT", "GraphGreyBoxPredictor", "OnnxDropoutAdapter", "find_feature_tensor", "insert_channel_mask",
           "torchscript_as_onnx"]

MASK_INPUT = "bioimage_cte_channel_mask"
"""Name of the graph input that carries the channel mask."""


def _producer_order(graph) -> dict[str, int]:
    """Position of the node producing each tensor (ONNX stores nodes in topological order)."""
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def intermediate_shapes(model, probe: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor the graph computes from ``probe``, from one run with each as an output."""
    import onnx
    import onnxruntime as ort

    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    graph = probe_model.graph
    known = {o.name for o in graph.output}
    for name in _producer_order(graph):
        if name not in known:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {_data_inputs(model)[0]: probe})
    return {n: tuple(np.shape(v)) for n, v in zip(names, outputs, strict=True)}


def find_feature_tensor(model, probe: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(name, shape for ``probe``) of the intermediate tensor to perturb: the graph's bottleneck.

    Among the intermediate tensors with at least two spatial axes (not the graph's outputs), those
    at the smallest spatial size with the most channels are candidates; the one produced last wins
    (the output of the deepest block, not a tensor inside it).
    """
    shapes = intermediate_shapes(model, probe)
    order = _producer_order(model.graph)
    outputs = {o.name for o in model.graph.output}
    candidates = [(int(np.prod(shape[2:])), -shape[1], -order[name], name)
                  for name, shape in shapes.items()
                  if name not in outputs and name in order and len(shape) >= 4 and shape[0] == probe.shape[0]]
    if not candidates:
        raise InvalidModelError("its ONNX graph has no intermediate 4-D feature maps to perturb")
    name = min(candidates)[3]
    return name, shapes[name]


def _data_inputs(model) -> list[str]:
    """Graph inputs that are data, not initializers (older exporters list weights as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def insert_channel_mask(model, tensor: str, n_channels: int, *, ndim: int = 4):
    """A copy of ``model`` in which every consumer of ``tensor`` reads ``tensor * mask`` instead.

    The mask is the new graph input :data:`MASK_INPUT` of shape ``(1, n_channels, 1, ...)``, float32.
    """
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    masked = f"{tensor}__bioimage_cte_masked"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = masked
    mul = helper.make_node("Mul", [tensor, MASK_INPUT], [masked], name="bioimage_cte_channel_dropout")
    position = _producer_order(graph)[tensor] + 1
    graph.node.insert(position, mul)
    graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT,
                                                     [1, n_channels] + [1] * (ndim - 2)))
    return out


def probe_input(descr) -> np.ndarray:
    """A zero input of a small valid shape in the axis order (:func:`~bioimage_cte.predict.tiling.probe_shape`)."""
    from bioimage_cte.predict.tiling import probe_shape

    return np.zeros(probe_shape(descr), dtype=np.float32)


class OnnxDropoutAdapter(ONNXModelAdapter):
    """bioimageio.core's ONNX adapter over a graph rewritten for channel dropout at its bottleneck.

    Parameters
    ----------
    descr : ModelDescr
        The model description (inputs, outputs, axes).
    graph : bytes
        The unmodified ONNX graph (the package's onnx weights, or its torchscript weights exported).
    layer : str, optional
        Name of the tensor to perturb; default: :func:`find_feature_tensor`.
    devices : sequence of str
        Only the CPU is used: onnxruntime's CPU execution provider.
    """

    def __init__(self, descr, *, graph: bytes, layer: str | None = None, devices: Sequence[str] = ("cpu",)) -> None:
        self._graph = graph
        self.requested_layer = layer
        self.layer: str | None = None
        self.n_channels = 0
        self._ndim = 4
        self._mask: np.ndarray | None = None
        self._ones: np.ndarray | None = None
        # bypass ONNXModelAdapter.__init__, which insists on the description's onnx weights: the graph
        # may come from torchscript weights
        self._onnx_descr = None
        self._input_names = None
        super(ONNXModelAdapter, self).__init__(model_description=descr, devices=list(devices))

    def _parse_devices(self, devices):
        return ["CPUExecutionProvider"]

    def _init_model_on_device(self, device):
        import onnx
        import onnxruntime as ort
        import torch

        model = onnx.load_from_string(self._graph)
        probe = probe_input(self._model_descr)
        if self.requested_layer is None:
            self.layer, shape = find_feature_tensor(model, probe)
        else:
            shapes = intermediate_shapes(model, probe)
            if self.requested_layer not in shapes or len(shapes[self.requested_layer]) < 4:
                raise InvalidModelError(f"layer {self.requested_layer!r} is no 4-D tensor of its ONNX graph; "
                                        "leave --layer out to perturb the bottleneck found automatically")
            self.layer, shape = self.requested_layer, shapes[self.requested_layer]
        self.n_channels, self._ndim = shape[1], len(shape)
        rewritten = insert_channel_mask(model, self.layer, self.n_channels, ndim=self._ndim)
        options = ort.SessionOptions()
        # the thread budget is torch's (one thread per Dask worker, say), not every core of the machine
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(rewritten.SerializeToString(), options, providers=[device])
        self._input_names = [i for i in _data_inputs(rewritten) if i != MASK_INPUT]
        self._ones = np.ones([1, self.n_channels] + [1] * (self._ndim - 2), dtype=np.float32)
        return session

    def set_perturbation(self, perturbation: FeatureDropout | None) -> None:
        """Dropout for the following passes (None: clean, a mask of ones)."""
        if perturbation is None or perturbation.p == 0.0:
            self._mask = None
        else:
            self._mask = perturbation.channel_mask(self.n_channels).reshape(self._ones.shape)

    def remove_hooks(self) -> None:
        """Nothing to detach: the mask is an input of the session, not a hook."""

    def _forward_impl(self, device, model, input_arrays):
        feeds = dict(zip(self._input_names, input_arrays, strict=True))
        feeds[MASK_INPUT] = self._ones if self._mask is None else self._mask
        return list(model.run(None, feeds))


#: ONNX opset of the export: supported by every onnxruntime release the extra allows.
OPSET = 17


def torchscript_as_onnx(descr) -> bytes:
    """The model's torchscript weights exported to an ONNX graph (bytes), with free batch and spatial axes.

    Parameters
    ----------
    descr : ModelDescr
        A model description with ``torchscript`` weights.
    """
    import torch

    module = torch.jit.load(descr.weights.torchscript.get_reader(), map_location="cpu")
    module.eval()
    example = torch.from_numpy(probe_input(descr))
    outputs = [f"output{i}" for i in range(len(descr.outputs))]
    free = ("batch", "z", "y", "x")
    dynamic = {"input": {i: str(a.id) for i, a in enumerate(descr.inputs[0].axes) if str(a.id) in free}}
    for name, tensor in zip(outputs, descr.outputs, strict=True):
        dynamic[name] = {i: f"{name}_{a.id}" for i, a in enumerate(tensor.axes) if str(a.id) in free}
    buffer = io.BytesIO()
    # the TorchScript exporter is deprecated in favour of dynamo, which cannot take a ScriptModule
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["input"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET)
    return buffer.getvalue()


class GraphGreyBoxPredictor(GreyBox):
    """Channel dropout in an ONNX graph: the package's onnx weights, or its torchscript weights exported to ONNX.

    Parameters
    ----------
    choice : WeightChoice
        ``onnx`` or ``torchscript`` weights, from :func:`bioimage_cte.zoo.weights.greybox_weights`.
    name : str
        Display name used in error messages.
    layer : str, optional
        Name of the ONNX tensor to perturb; default: the bottleneck found by
        :func:`bioimage_cte.predict.onnx_greybox.find_feature_tensor`.
    devices : sequence of str
        Ignored beyond the CPU: onnxruntime's CPU execution provider runs the graph.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels are predicted tile by tile.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.zoo.readout.choose_readout`).
    """

    def __init__(self, choice: WeightChoice, *, name: str = "model", layer: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024, output_channel: str | None = None) -> None:
        from bioimageio.core import create_prediction_pipeline

        descr = choice.descr
        try:
            if choice.format == "onnx":
                graph = descr.weights.onnx.get_reader().read()
            else:
                graph = torchscript_as_onnx(descr)
            self.adapter = OnnxDropoutAdapter(descr, graph=graph, layer=layer, devices=devices)
            pipeline = create_prediction_pipeline(descr, model_adapter=self.adapter)
        except InvalidModelError as e:
            raise InvalidModelError(f"{name}: {e}") from e
        except Exception as e:
            raise InvalidModelError(f"{name}: could not prepare its {choice.format} weights for grey-box dropout "
                                    f"({first_line(e)}); use an input-perturbation estimator (--estimator "
                                    "cte-input)") from e
        super().__init__(descr, pipeline, weights=choice, name=name, max_tile=max_tile, devices=devices,
                         output_channel=output_channel)
