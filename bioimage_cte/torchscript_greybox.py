"""Grey-box access to TorchScript weights, through ONNX.

A loaded TorchScript module runs its forward pass in C++: torch refuses forward hooks on it
("register_forward_hook is not supported on ScriptModules"), so the hook that the state-dict path
uses is not available, and rewriting a TorchScript graph needs torch's private ``torch._C`` API.
Instead the module is exported to ONNX in memory with ``torch.onnx.export`` (the TorchScript-based
exporter, ``dynamo=False``, which accepts a ``ScriptModule``), and that graph is perturbed like
ONNX weights (:mod:`bioimage_cte.onnx_greybox`): same feature-tensor search, same mask input.
Loading and exporting run no package code (a TorchScript file is a graph, loaded as black-box
prediction loads it).

Needs the ``onnx`` extra (``pip install 'bioimage-cte[onnx]'``); without it the model is black-box
only, with that reason. Import lazily (imports torch).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from bioimage_cte.onnx_greybox import probe_input

__all__ = ["torchscript_as_onnx"]

#: ONNX opset of the export: supported by every onnxruntime release the extra allows.
OPSET = 17


def torchscript_as_onnx(descr) -> bytes:
    """The model's torchscript weights exported to an ONNX graph (bytes), with free batch and spatial axes.

    Parameters
    ----------
    descr : ModelDescr
        A model description with ``torchscript`` weights.
    """
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
