"""The grey-box adapter for ``pytorch_state_dict`` weights: channel dropout by a forward hook on the torch network.

The network is reached through a model adapter handed to the bioimageio.core pipeline (a subclass of its
``PytorchModelAdapter``), so the model's own pre- and postprocessing, padding and tiling stay those of every other
predictor. The hook multiplies one layer's output (the bottleneck by default, found by
:func:`bioimage_cte.predict.layers.find_perturbation_layer` on first use) by
:meth:`~bioimage_cte.predict.dropout.FeatureDropout.channel_mask`.

Built by :func:`bioimage_cte.predict.factory.make_predictor` from a :class:`~bioimage_cte.zoo.weights.WeightChoice`
whose description's architecture the code policy allows. Imports torch; import lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from bioimageio.core import create_prediction_pipeline
from bioimageio.core.backends.pytorch_backend import PytorchModelAdapter
from bioimageio.spec.model import v0_5

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.layers import find_perturbation_layer
from bioimage_cte.predict.predictor import GreyBox
from bioimage_cte.zoo.models import first_line, raise_if_damaged
from bioimage_cte.zoo.weights import WeightChoice

__all__ = ["GreyBoxPredictor"]


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
            mask = torch.from_numpy(self.perturbation.channel_mask(output.shape[1]))
            self._mask = mask.view(1, -1, *([1] * (output.ndim - 2)))
        return output * self._mask.to(device=output.device, dtype=output.dtype)


class GreyBoxPredictor(GreyBox):
    """Predict with ``pytorch_state_dict`` weights and optional channel dropout at one layer.

    Parameters
    ----------
    choice : WeightChoice
        ``pytorch_state_dict`` weights from :func:`bioimage_cte.zoo.weights.greybox_weights` (its description's
        architecture is one the code policy allows).
    name : str
        Display name used in error messages.
    layer : str, optional
        Module name (as in ``net.named_modules()``) to perturb; default: the bottleneck.
    devices : sequence of str
        Torch devices.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels (voxels, in 3D) are predicted tile by
        tile, in blocks of at most that many.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.zoo.readout.choose_readout`).
    """

    def __init__(self, choice: WeightChoice, *, name: str = "model", layer: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024, output_channel: str | None = None) -> None:
        descr = choice.descr
        try:
            self.adapter = _DropoutAdapter(descr, layer=layer, devices=devices)
            pipeline = create_prediction_pipeline(descr, model_adapter=self.adapter)
        except InvalidModelError as e:
            raise InvalidModelError(f"{name}: {e}") from e
        except Exception as e:
            # checked first: bioimageio.core words every torch.load failure as weights_only's
            raise_if_damaged(e, name=name, source=descr.weights.pytorch_state_dict.source)
            if "weights_only" in str(e):  # bioimageio.core refused a pickle that is not a plain state dict
                raise InvalidModelError(
                    f"{name}: {descr.weights.pytorch_state_dict.source} is not a plain state dict (torch.load with "
                    "weights_only=True refused it, nothing in it ran); save only net.state_dict() as the weights"
                ) from e
            raise InvalidModelError(f"{name}: could not load the torch network ({first_line(e)})") from e
        super().__init__(descr, pipeline, weights=choice, name=name, max_tile=max_tile, devices=devices,
                         output_channel=output_channel)
