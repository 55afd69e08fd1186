"""One perturbed pass of an estimator, as a report shows it: the prediction, mapped back, and what was done.

A report of a ranking draws, next to a model's clean prediction, one perturbed prediction that its estimator
compares it with, and the per-pixel disagreement the score averages. :func:`perturbed_view` gives that pass for
every estimator that perturbs: the same draw as scoring (same seed, same image index), so the picture is what was
scored. Geometric passes (``tta``, ``cte-dihedral`` and the dihedral family of ``cte``) are mapped back onto the
input's pixel grid before they are compared, as in scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bioimage_cte.cte.consistency import Consistency
from bioimage_cte.cte.estimators import TTA_FORMS
from bioimage_cte.cte.perturbations import dihedral, undo_dihedral
from bioimage_cte.predict.segmentation import Prediction

__all__ = ["DIHEDRAL_NAMES", "PerturbationView", "perturbed_view", "view_of"]

#: The dihedral elements of :func:`~bioimage_cte.cte.perturbations.dihedral`: k quarter turns, then a left-right
#: flip from k = 4 on.
DIHEDRAL_NAMES: dict[int, str] = {1: "rot90", 2: "rot180", 3: "rot270", 4: "left-right flip",
                                  5: "rot90 then left-right flip", 6: "rot180 then left-right flip",
                                  7: "rot270 then left-right flip"}


@dataclass(frozen=True)
class PerturbationView:
    """How one estimator's perturbed pass is shown.

    Attributes
    ----------
    family : str
        ``"dropout"`` (inside the network), ``"input"`` (noise and intensity changes) or ``"dihedral"`` (a flip or
        rotation, mapped back).
    consistency : str
        The consistency the score uses for this pass: its disagreement map is drawn.
    summary : str
        One sentence for the report: what the estimator does and which pass is drawn.
    """

    family: str
    consistency: Consistency
    summary: str


def _dihedral_pass(predictor, image: np.ndarray, k: int) -> Prediction:
    out = predictor.predict(np.ascontiguousarray(dihedral(image, k)))
    back = (None if field is None else np.ascontiguousarray(undo_dihedral(field, k))
            for field in (out.foreground, out.boundary, out.classes))
    foreground, boundary, classes = back
    return Prediction(foreground, boundary, classes, out.scored, volumetric=out.volumetric)


def view_of(estimator: Any, *, layer: str | None = None) -> PerturbationView | None:
    """What :func:`perturbed_view` draws for ``estimator``, or None when it compares no perturbed prediction with the
    clean one (``confidence``, ``entropy``, ``consensus``, ``random``; ``mc-dropout`` compares dropout samples with
    each other).

    Examples
    --------
    >>> from bioimage_cte.cte.estimators import TTAAgreement
    >>> view = view_of(TTAAgreement())
    >>> view.family, view.consistency, view.summary.split("; ")[-1]
    ('dihedral', 'hard', 'drawn: the first, rot90')
    """
    name = getattr(estimator, "name", "")
    if name == "tta":
        names = ", ".join(DIHEDRAL_NAMES[k] for k in estimator.transforms)
        first = DIHEDRAL_NAMES[estimator.transforms[0]]
        return PerturbationView("dihedral", "hard", f"tta predicts each image flipped and rotated ({names}), maps "
                                "each prediction back and scores how many foreground pixels agree with the clean "
                                f"prediction (hard); drawn: the first, {first}")
    if name in TTA_FORMS:  # the combined forms (tta itself is above)
        names = ", ".join(DIHEDRAL_NAMES[k] for k in estimator.transforms)
        first = DIHEDRAL_NAMES[estimator.transforms[0]]
        if name == "tta+consensus+boundary":
            combined = "a weighted sum with how well each mask's boundary follows the image's edges"
        elif "weights" in estimator.settings():
            combined = "the image's predicted Dice"
        else:
            combined = "the mean of the two ranks"
        return PerturbationView("dihedral", "hard", f"{name} scores each image by tta (flipped and rotated: "
                                f"{names}; predictions mapped back, foreground pixels that agree with the clean "
                                f"prediction) and by agreement with every candidate's majority vote, combined into "
                                f"{combined}; drawn: tta's first, {first}")
    if name == "cte-dihedral":
        return PerturbationView("dihedral", estimator.consistency, "cte-dihedral predicts each image under one "
                                "seeded flip or rotation, maps the prediction back and scores its "
                                f"{estimator.consistency} consistency with the clean prediction")
    if name == "cte":
        return PerturbationView("dihedral", estimator.consistency, "cte combines three families (feature dropout "
                                "on grey-box models, a seeded flip or rotation, Gaussian noise) by their ranks "
                                "among the candidates; drawn: its flip-or-rotation family, mapped back, with its "
                                f"{estimator.consistency} consistency")
    if name == "cte-dropout":
        where = layer or "the bottleneck"
        return PerturbationView("dropout", estimator.consistency, f"cte-dropout zeroes whole feature maps with "
                                f"probability p = {estimator.strength} at {where} and scores the "
                                f"{estimator.consistency} consistency with the clean prediction")
    if name == "cte-input":
        return PerturbationView("input", estimator.consistency, f"cte-input adds {estimator.kind} perturbation of "
                                f"strength {estimator.strength} to the input and scores the "
                                f"{estimator.consistency} consistency with the clean prediction")
    return None


def perturbed_view(estimator: Any, predictor, image: np.ndarray, *, seed: int,
                   index: int) -> tuple[Prediction, str] | None:
    """The perturbed prediction a report draws for image ``index`` (the draw scoring made) and its caption.

    Returns None for an estimator :func:`view_of` has no view of. Geometric passes are mapped back.
    """
    name = getattr(estimator, "name", "")
    if view_of(estimator) is None:
        return None
    if name in TTA_FORMS:
        k = estimator.transforms[0]
        return _dihedral_pass(predictor, image, k), f"{DIHEDRAL_NAMES[k]}, mapped back"
    if name in ("cte-dihedral", "cte"):
        from bioimage_cte.cte.estimators import CTEDihedral

        k = CTEDihedral.transform(seed, index)
        return _dihedral_pass(predictor, image, k), f"{DIHEDRAL_NAMES[k]}, mapped back"
    caption = "with feature dropout" if name == "cte-dropout" else f"with {estimator.kind} input perturbation"
    return estimator.perturbed_prediction(predictor, image, seed=seed, index=index), caption
