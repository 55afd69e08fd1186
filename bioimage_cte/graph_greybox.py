"""Grey-box predictors for every weights format, chosen per model by :func:`bioimage_cte.weights.greybox_weights`.

``pytorch_state_dict`` weights run as :class:`bioimage_cte.predictors.GreyBoxPredictor` (a forward
hook); ``onnx`` weights, and ``torchscript`` weights exported to ONNX, run as
:class:`GraphGreyBoxPredictor`: the rewritten graph of :mod:`bioimage_cte.onnx_greybox` inside a
bioimageio.core prediction pipeline, with the same padding, tiling and pre/postprocessing as every
other predictor. Each predictor carries its :class:`~bioimage_cte.weights.WeightChoice` as ``weights``.

Imports torch and bioimageio.core; onnx and onnxruntime only for graph weights. Import lazily.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from bioimage_cte.errors import InvalidModelError
from bioimage_cte.models import _first_line
from bioimage_cte.perturbations import FeatureDropout
from bioimage_cte.predictors import GreyBoxPredictor, _Predictor
from bioimage_cte.trust import CodePolicy
from bioimage_cte.weights import WeightChoice, greybox_weights

__all__ = ["GraphGreyBoxPredictor", "make_greybox_predictor"]


class GraphGreyBoxPredictor(_Predictor):
    """Channel dropout in an ONNX graph: the package's onnx weights, or its torchscript weights exported to ONNX.

    Parameters
    ----------
    choice : WeightChoice
        ``onnx`` or ``torchscript`` weights, from :func:`bioimage_cte.weights.greybox_weights`.
    name : str
        Display name used in error messages.
    layer : str, optional
        Name of the ONNX tensor to perturb; default: the bottleneck found by
        :func:`bioimage_cte.onnx_greybox.find_feature_tensor`.
    devices : sequence of str
        Ignored beyond the CPU: onnxruntime's CPU execution provider runs the graph.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels are predicted tile by tile.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.readout.choose_readout`).
    """

    def __init__(self, choice: WeightChoice, *, name: str = "model", layer: str | None = None,
                 devices: Sequence[str] = ("cpu",), max_tile: int = 1024, output_channel: str | None = None) -> None:
        from bioimageio.core import create_prediction_pipeline

        from bioimage_cte.onnx_greybox import OnnxDropoutAdapter

        descr = choice.descr
        try:
            if choice.format == "onnx":
                graph = descr.weights.onnx.get_reader().read()
            else:
                from bioimage_cte.torchscript_greybox import torchscript_as_onnx

                graph = torchscript_as_onnx(descr)
            self.adapter = OnnxDropoutAdapter(descr, graph=graph, layer=layer, devices=devices)
            pipeline = create_prediction_pipeline(descr, model_adapter=self.adapter)
        except InvalidModelError as e:
            raise InvalidModelError(f"{name}: {e}") from e
        except Exception as e:
            raise InvalidModelError(f"{name}: could not prepare its {choice.format} weights for grey-box dropout "
                                    f"({_first_line(e)}); use an input-perturbation estimator (--estimator "
                                    "cte-input)") from e
        self.weights = choice
        super().__init__(descr, pipeline, name=name, max_tile=max_tile, devices=devices,
                         output_channel=output_channel)

    @property
    def layer(self) -> str | None:
        """The ONNX tensor the mask multiplies."""
        return self.adapter.layer

    @contextlib.contextmanager
    def perturbed(self, perturbation: FeatureDropout) -> Iterator[None]:
        """Within this block every prediction runs with ``perturbation`` at the feature tensor."""
        self.adapter.set_perturbation(perturbation)
        try:
            yield
        finally:
            self.adapter.set_perturbation(None)


def make_greybox_predictor(descr, *, name: str, weight_format: str | None = None, layer: str | None = None,
                           devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                           code_policy: CodePolicy | None = None, output_channel: str | None = None):
    """The grey-box predictor for the weights :func:`~bioimage_cte.weights.greybox_weights` chooses.

    Raises :class:`~bioimage_cte.errors.UntrustedCodeError` or :class:`~bioimage_cte.errors.InvalidModelError`
    with the reason when no weights of the model can be perturbed here.
    """
    policy = code_policy or CodePolicy()
    choice = greybox_weights(descr, policy, name=name, weight_format=weight_format)
    if choice.format == "pytorch_state_dict":
        predictor = GreyBoxPredictor(descr, name=name, layer=layer, devices=devices, max_tile=max_tile,
                                     code_policy=policy, output_channel=output_channel)
        predictor.weights = choice
        return predictor
    return GraphGreyBoxPredictor(choice, name=name, layer=layer, devices=devices, max_tile=max_tile,
                                 output_channel=output_channel)
