"""Perturbations: of the input image (black-box) and of internal features (grey-box).

Input perturbations are applied to the **raw** image, before the model's own preprocessing,
because a black-box model is reached only through its bioimageio pipeline. To make a strength
mean the same thing for any input range (uint8, uint16 camera counts, floats), the image is
mapped to [0, 1] by its own 1st and 99.8th percentiles, perturbed there, and mapped back:
Gaussian noise of strength 0.1 is noise with a standard deviation of 10 % of the image's
dynamic range. A model whose preprocessing normalises each image (zero-mean-unit-variance,
percentile scaling) undoes a brightness shift and a contrast change exactly, so for such models
only ``gaussian`` and ``gamma`` perturb anything; the default is ``gaussian``.

Feature perturbation is channel dropout at one layer (:class:`bioimage_cte.predict.dropout.FeatureDropout`); the
grey-box predictors apply it inside the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bioimage_cte.predict.segmentation import Prediction
from bioimage_cte.predict.views import dihedral, map_back, undo_dihedral

__all__ = ["DEFAULT_DROPOUT", "DEFAULT_INPUT_STRENGTH", "INPUT_KINDS", "InputKind", "InputPerturbation",
           "dihedral", "dihedral_predictions", "dynamic_range", "perturb_image", "undo_dihedral"]

InputKind = Literal["gaussian", "brightness", "contrast", "gamma"]
INPUT_KINDS: tuple[InputKind, ...] = ("gaussian", "brightness", "contrast", "gamma")

#: Default strengths: dropout rate 0.2 (the paper's nuclei setting) and noise of 10 % of the range.
DEFAULT_DROPOUT = 0.2
DEFAULT_INPUT_STRENGTH = 0.1


@dataclass(frozen=True)
class InputPerturbation:
    """An input-space perturbation of a given kind and strength (in units of the image's range).

    ``gaussian``: additive noise with standard deviation ``strength``; ``brightness``: shift by
    ``strength``; ``contrast``: scale around the mean by ``1 + strength``; ``gamma``: exponent
    ``1 + strength`` on the [0, 1]-scaled image (values below 0 keep their sign).
    """

    kind: InputKind = "gaussian"
    strength: float = DEFAULT_INPUT_STRENGTH

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"unknown input perturbation {self.kind!r}: use one of {', '.join(INPUT_KINDS)}")
        if not np.isfinite(self.strength) or (self.kind in ("gaussian",) and self.strength < 0):
            raise ValueError(f"{self.kind} strength {self.strength} is invalid: use a finite value >= 0")
        if self.kind in ("contrast", "gamma") and self.strength <= -1:
            raise ValueError(f"{self.kind} strength {self.strength} must be > -1 (factor 1 + strength > 0)")


def dynamic_range(image: np.ndarray) -> tuple[float, float]:
    """The image's 1st and 99.8th percentiles; a constant image gets a unit range around its value."""
    lo, hi = np.percentile(image, (1.0, 99.8))
    if hi - lo <= 0:
        return float(lo), float(lo) + 1.0
    return float(lo), float(hi)


def perturb_image(
    image: np.ndarray, perturbation: InputPerturbation, *, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Apply an input perturbation to a raw image, with strength relative to the image's range.

    Parameters
    ----------
    image : numpy.ndarray
        Raw image, any shape and numeric dtype.
    perturbation : InputPerturbation
        Kind and strength.
    rng : numpy.random.Generator or int or None
        Noise source; the same seed gives the same perturbed image.

    Returns
    -------
    numpy.ndarray of float32
        The perturbed image in the original intensity units.

    Examples
    --------
    >>> x = np.linspace(0, 100, 1000, dtype=np.float32).reshape(10, 100)
    >>> y = perturb_image(x, InputPerturbation("brightness", 0.1))
    >>> round(float((y - x).mean()), 2)
    9.88
    >>> z = perturb_image(x, InputPerturbation("gaussian", 0.0), rng=0)
    >>> bool(np.allclose(z, x, atol=1e-4))
    True
    """
    lo, hi = dynamic_range(image)
    x = (image.astype(np.float32) - lo) / (hi - lo)
    s = perturbation.strength
    if perturbation.kind == "gaussian":
        x = x + s * np.random.default_rng(rng).standard_normal(x.shape).astype(np.float32)
    elif perturbation.kind == "brightness":
        x = x + s
    elif perturbation.kind == "contrast":
        mean = x.mean()
        x = mean + (1.0 + s) * (x - mean)
    else:
        x = np.sign(x) * np.abs(x) ** (1.0 + s)
    return (x * (hi - lo) + lo).astype(np.float32)


def dihedral_predictions(predictor: Any, image: np.ndarray, transforms: Sequence[int]) -> list[Prediction]:
    """The predictions of the views ``dihedral(image, k)``, k in ``transforms``, mapped back to the image's frame.

    A predictor of :mod:`bioimage_cte.predict` predicts them itself (``predict_views``: preprocessing shared by the
    views where the model allows, see :mod:`bioimage_cte.predict.views`); any other object with ``predict`` is asked
    for each view.
    """
    views = getattr(predictor, "predict_views", None)
    if views is not None:
        return views(image, transforms)
    return [map_back(predictor.predict(np.ascontiguousarray(dihedral(image, k))), k) for k in transforms]
