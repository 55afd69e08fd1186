"""The predictor factory: one model description and the run's choices in, one ready predictor out.

:func:`make_predictor` checks the model's input, makes the weights choice once
(:func:`bioimage_cte.zoo.weights.choose_weights`: format, grey-box or black-box access, and why) and builds the one
adapter for it:

=======================  ============  ==============================================
weights                  access        adapter
=======================  ============  ==============================================
any format               black-box     :class:`~bioimage_cte.predict.blackbox.BlackBoxPredictor`
``pytorch_state_dict``   grey-box      :class:`~bioimage_cte.predict.torch_greybox.GreyBoxPredictor`
``onnx``, ``torchscript``  grey-box    :class:`~bioimage_cte.predict.onnx_greybox.GraphGreyBoxPredictor`
=======================  ============  ==============================================

Each adapter module is imported only when its weights are chosen. Every predictor carries its
:class:`~bioimage_cte.zoo.weights.WeightChoice` as ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bioimage_cte.zoo.inputs import describe_inputs, input_feed
from bioimage_cte.zoo.models import check_inputs
from bioimage_cte.zoo.trust import CodePolicy
from bioimage_cte.zoo.weights import choose_weights

if TYPE_CHECKING:
    from bioimageio.spec.model import v0_5

    from bioimage_cte.predict.predictor import Predictor

__all__ = ["make_predictor"]

def make_predictor(descr: v0_5.ModelDescr, *, name: str, greybox: bool, weight_format: str | None = None,
                   layer: str | None = None, devices: Sequence[str] = ("cpu",), max_tile: int = 1024,
                   code_policy: CodePolicy | None = None, output_channel: str | None = None,
                   inputs: Sequence[tuple[str, Sequence[int]]] | None = None) -> Predictor:
    """A ready predictor for one model: the weights chosen once, then the one adapter for them.

    Parameters
    ----------
    descr : ModelDescr
        A loaded, checked model description (:func:`bioimage_cte.zoo.models.load_model`).
    name : str
        Display name used in error messages (the package's location).
    greybox : bool
        Whether the predictor must perturb features (``predictor.perturbed(...)``).
    weight_format : str, optional
        Use only this weights format (``--weight-format``); default: the preferred one that may run.
    layer : str, optional
        Grey-box only: the layer to perturb (torch module name or ONNX tensor); default: the bottleneck.
    devices : sequence of str
        Torch devices, e.g. ``["cpu"]``.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels (voxels) are predicted tile by tile.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted libraries only, see :mod:`bioimage_cte.zoo.trust`).
    output_channel : str, optional
        The output to score (see :func:`bioimage_cte.zoo.readout.choose_readout`).
    inputs : sequence of (input id, channels), optional
        A model with several inputs: the image channels feeding each (``--inputs``; default: by their numbered
        names, see :mod:`bioimage_cte.zoo.inputs`).

    Raises
    ------
    UntrustedCodeError
        The weights that would run need package code the policy does not allow.
    InvalidModelError
        The input cannot be fed, no weights can run here, or the weights do not load; the message names ``name``.

    Examples
    --------
    >>> from bioimage_cte.zoo.models import load_model
    >>> package = "resources/zoo/nuclei-small-bright.zip"
    >>> with make_predictor(load_model(package), name=package, greybox=False) as predictor:  # doctest: +SKIP
    ...     predictor.weights.access
    'black-box'
    """
    check_inputs(descr, name)  # before any package code or weights are loaded
    feed = input_feed(describe_inputs(descr), inputs, name=name)
    predictor = _build(descr, name=name, greybox=greybox, weight_format=weight_format, layer=layer, devices=devices,
                       max_tile=max_tile, code_policy=code_policy, output_channel=output_channel)
    predictor.feed = feed
    return predictor


def _build(descr: v0_5.ModelDescr, *, name: str, greybox: bool, weight_format: str | None, layer: str | None,
           devices: Sequence[str], max_tile: int, code_policy: CodePolicy | None,
           output_channel: str | None) -> Predictor:
    choice = choose_weights(descr, code_policy or CodePolicy(), name=name, greybox=greybox,
                            weight_format=weight_format)
    # each adapter is imported only when chosen: torch, onnxruntime or TensorFlow load only when needed
    if not greybox:
        from bioimage_cte.predict.blackbox import BlackBoxPredictor

        return BlackBoxPredictor(choice, name=name, devices=devices, max_tile=max_tile, output_channel=output_channel)
    if choice.format == "pytorch_state_dict":
        from bioimage_cte.predict.torch_greybox import GreyBoxPredictor as adapter
    else:
        from bioimage_cte.predict.onnx_greybox import GraphGreyBoxPredictor as adapter
    return adapter(choice, name=name, layer=layer, devices=devices, max_tile=max_tile, output_channel=output_channel)
