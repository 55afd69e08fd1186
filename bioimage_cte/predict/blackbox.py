"""The black-box adapter: any weights format, through the model's own bioimageio.core pipeline; inputs and outputs only.

Built by :func:`bioimage_cte.predict.factory.make_predictor` from the :class:`~bioimage_cte.zoo.weights.WeightChoice`
that :func:`bioimage_cte.zoo.weights.choose_weights` made. Imports bioimageio.core; import lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

from bioimageio.core import create_prediction_pipeline

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.predict.predictor import Predictor
from bioimage_cte.zoo.models import first_line, raise_if_damaged
from bioimage_cte.zoo.weights import WeightChoice, adapter_format, blackbox_ran_as

__all__ = ["BlackBoxPredictor"]


class BlackBoxPredictor(Predictor):
    """Predict through a model's own bioimageio pipeline with the weights ``choice`` names.

    Parameters
    ----------
    choice : WeightChoice
        Black-box weights (``format`` None: bioimageio.core's priority order) and the description to build from.
    name : str
        Display name used in error messages.
    devices : sequence of str
        Torch devices, e.g. ``["cpu"]`` or ``["cuda:0"]``.
    max_tile : int
        Images whose padded input would exceed ``max_tile ** 2`` pixels (voxels, in 3D) are predicted tile by
        tile, in blocks of at most that many.
    output_channel : str, optional
        The output channel to score (see :func:`bioimage_cte.zoo.readout.choose_readout`).
    """

    def __init__(self, choice: WeightChoice, *, name: str = "model", devices: Sequence[str] = ("cpu",),
                 max_tile: int = 1024, output_channel: str | None = None) -> None:
        descr = choice.descr
        try:
            pipeline = create_prediction_pipeline(descr, devices=list(devices), weights_format=choice.format)
        except Exception as e:
            # bioimageio.core's priority order tries the state dict first: name it when no format was chosen
            entry = getattr(descr.weights, choice.format or "pytorch_state_dict", None)
            source = getattr(entry, "source", "its weights file")
            raise_if_damaged(e, name=name, source=source)
            raise InvalidModelError(f"{name}: could not load the model ({first_line(e)}); check its weights "
                                    "with 'bioimageio test'") from e
        used = adapter_format(getattr(pipeline, "_adapter", None))
        if used == "keras_hdf5":
            import keras

            keras.utils.disable_interactive_logging()  # Keras' predict() prints a progress bar per image otherwise
        super().__init__(descr, pipeline, weights=blackbox_ran_as(choice, used), name=name, max_tile=max_tile,
                         devices=devices, output_channel=output_channel)
