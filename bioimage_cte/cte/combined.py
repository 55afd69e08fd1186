"""The combined CTE estimator ``cte``: consistency under several perturbation families, combined across candidates.

Each family is a different tolerable perturbation: feature dropout at the bottleneck (grey-box models only), a
seeded flip/rotation of the input (dihedral) and Gaussian input noise. Each fails on different models -- dropout
cannot see a model that is consistently wrong, a geometric perturbation rewards any rotation-equivariant output,
noise rewards models whose normalisation swallows it -- so no family is trusted alone.

The families' scores are not on one scale (a dropout consistency of 0.8 and a noise consistency of 0.8 do not mean
the same), so they are made comparable across the candidate models before they are averaged: within each family,
every model scored by it gets its rank among them, scaled to [0, 1] (0: worst, 1: best, ties share the mean rank),
and a model's combined score is the mean of its family ranks. No weight is fitted to anything: every family counts
the same, and an uninformative family adds a rank that is noise around the middle for every model, which shrinks
the differences but does not reverse them. A model that is not grey-box is scored by the families that need no
grey-box access only, and its rank in each of them is among every candidate of that family.

Ranks need the other candidates: per image each model records one consistency value per family (stored per model,
so zoo jobs can cache it), and the ranks are taken when the ranking is built, image by image
(:func:`per_image_combined`): a model's ``cte`` value on an image is the mean of its family ranks there, and its
score the mean over images. A per-image value makes the bootstrap intervals and the adaptive budget
(:mod:`bioimage_cte.run.budget`) work as for every other estimator. :func:`combine` is the same combination on per-model
scores (used by the benchmark to compare the two orders of "median, then rank").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from bioimage_cte.cte.consistency import Aggregate, Consistency, aggregate
from bioimage_cte.cte.estimators import CTEDihedral, CTEDropout, CTEInput, EstimatorConfig
from bioimage_cte.cte.perturbations import DEFAULT_DROPOUT, DEFAULT_INPUT_STRENGTH

if TYPE_CHECKING:
    from bioimage_cte.cte.outcomes import ModelResult
    from bioimage_cte.predict.segmentation import Prediction

__all__ = ["FAMILIES", "TIE_TOLERANCE", "CTECombined", "combine", "family_scores", "normalised_ranks",
           "per_image_combined", "tied_ranks"]

#: Perturbation families of ``cte``, in the order they are run per image.
FAMILIES: tuple[str, ...] = ("dropout", "dihedral", "noise")


#: Values closer than this are one value when ranked: the same network run as onnx, torchscript or a state dict
#: computes its consistency with float32 round-off of about 1e-7, and such twins must share their rank.
TIE_TOLERANCE = 1e-6


def tied_ranks(values: Sequence[float], *, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Ranks from 1 (lowest) of finite ``values``; values within ``tolerance`` of a neighbour share their mean rank.

    Sorted values form one group while each is within ``tolerance`` of the previous one, so round-off never splits
    a tie (plain ranking would give two twins 0.81234561 and 0.81234567 different ranks).

    Examples
    --------
    >>> tied_ranks([0.3, 0.1, 0.3 + 1e-9, 0.2]).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    start = 0
    for i in range(1, x.size + 1):
        if i == x.size or x[order[i]] - x[order[i - 1]] > tolerance:
            ranks[order[start:i]] = (start + 1 + i) / 2.0  # the mean of ranks start+1 .. i
            start = i
    return ranks


def normalised_ranks(scores: Sequence[float]) -> np.ndarray:
    """Ranks of the finite ``scores`` scaled to [0, 1] (1: highest; ties share their mean rank); ``nan`` stays.

    A family that scored a single model, or gave every model the same score, puts them all at 0.5. Scores within
    :data:`TIE_TOLERANCE` of each other are ties (:func:`tied_ranks`).

    Examples
    --------
    >>> normalised_ranks([0.9, 0.5, float("nan"), 0.7]).tolist()
    [1.0, 0.0, nan, 0.5]
    >>> normalised_ranks([0.9, 0.9 + 1e-8, 0.5]).tolist()
    [0.75, 0.75, 0.0]
    """
    x = np.asarray(scores, dtype=float)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        out[ok] = (tied_ranks(x[ok]) - 1.0) / (n - 1.0)
    return out


def family_scores(per_image: Mapping[str, Sequence[Sequence[float]]],
                  images: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per family, each model's median consistency over ``images`` (default: all); ``nan`` where it has none.

    ``per_image[family][m][i]`` is model m's consistency on image i (``nan``: empty image, or family not run).
    """
    out = {}
    for family, rows in per_image.items():
        values = np.array(rows, dtype=float)
        if images is not None:
            values = values[:, list(images)]
        with np.errstate(all="ignore"):
            finite = np.isfinite(values).any(axis=1)
            med = np.full(values.shape[0], np.nan)
            if finite.any():
                med[finite] = np.nanmedian(values[finite], axis=1)
        out[family] = med
    return out


def combine(scores: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Combined score per model: the mean over the families that scored it of its normalised rank in each.

    Parameters
    ----------
    scores : mapping of str to sequence of float
        ``scores[family][m]``: model m's score under that family, ``nan`` when the family did not score it.

    Returns
    -------
    numpy.ndarray
        One value per model in [0, 1]; ``nan`` for a model no family scored.

    Examples
    --------
    >>> combine({"dropout": [0.9, 0.8, float("nan")], "noise": [0.7, 0.6, 0.65]}).round(3).tolist()
    [1.0, 0.0, 0.5]
    """
    ranks = np.array([normalised_ranks(v) for v in scores.values()], dtype=float)
    if ranks.size == 0:
        return ranks
    with np.errstate(all="ignore"):
        scored = np.isfinite(ranks).any(axis=0)
        out = np.full(ranks.shape[1], np.nan)
        out[scored] = np.nanmean(ranks[:, scored], axis=0)
    return out


def per_image_combined(per_image: Mapping[str, Sequence[Sequence[float]]]) -> np.ndarray:
    """Per image, each model's mean over families of its normalised rank among the models on that image.

    ``per_image[family][m][i]`` is model m's consistency on image i (``nan``: not scored). Returns ``out[m][i]``
    (``nan`` where no family scored model m on image i). The model's ``cte`` score is the mean of its row: a per-image
    value like every other estimator's, so the bootstrap intervals and the adaptive budget treat it alike.

    Examples
    --------
    >>> per_image_combined({"noise": [[0.9, 0.5], [0.8, 0.6]], "dihedral": [[0.7, 0.7], [0.6, 0.9]]}).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    stacks = [np.asarray(v, dtype=float) for v in per_image.values()]
    if not stacks:
        return np.empty((0, 0))
    ranks = np.stack([np.column_stack([normalised_ranks(s[:, i]) for i in range(s.shape[1])]) for s in stacks])
    with np.errstate(all="ignore"):
        return np.where(np.isfinite(ranks).any(axis=0), np.nanmean(ranks, axis=0), np.nan)


@dataclass(frozen=True, kw_only=True)
class CTECombined:
    """``cte``: feature dropout (grey-box models only), dihedral and Gaussian-noise consistency, combined by ranks.

    ``dropout`` and ``noise`` are the family strengths (dropout rate; noise as a fraction of the image's range).
    """

    dropout: float = DEFAULT_DROPOUT
    noise: float = DEFAULT_INPUT_STRENGTH
    consistency: Consistency = "soft"
    name: ClassVar[str] = "cte"
    needs_greybox: ClassVar[bool] = False
    #: grey-box when the package allows it (for the dropout family), black-box otherwise
    wants_greybox: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False
    random: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._families(greybox=True)  # validates strengths and consistency

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> CTECombined:
        if config.strength is not None:
            raise ValueError(f"strength={config.strength}: the cte estimator perturbs with several families at "
                             "their own strengths; use 'auto', or set one with --estimator cte-dropout or cte-input")
        return cls(consistency=config.consistency)

    def settings(self) -> dict[str, object]:
        return {"families": list(FAMILIES), "dropout": self.dropout, "noise": self.noise,
                "consistency": self.consistency, "combination": "mean of per-family ranks, per image"}

    def _families(self, *, greybox: bool) -> dict[str, object]:
        out: dict[str, object] = {}
        if greybox:
            out["dropout"] = CTEDropout(strength=self.dropout, consistency=self.consistency)
        out["dihedral"] = CTEDihedral(consistency=self.consistency)
        out["noise"] = CTEInput(kind="gaussian", strength=self.noise, consistency=self.consistency)
        return out

    def key(self, family: str) -> str:
        """The per-image key of one family in a model's results."""
        return f"{self.name}/{family}"

    def family_values(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int,
                      greybox: bool) -> dict[str, float]:
        """One consistency per family on one image (dropout only on a grey-box predictor)."""
        return {self.key(f): est.score_image(predictor, image, clean, seed=seed, index=index)
                for f, est in self._families(greybox=greybox).items()}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        raise TypeError("cte ranks models against each other: score with family_values, combine with score_results")

    def score_results(self, results: Sequence[ModelResult]) -> list[list[float] | None]:
        """Per model, its combined value per image (None for a model no family scored)."""
        n_images = max((len(v) for r in results for v in r.per_image.values()), default=0)
        per_family = {}
        for f in FAMILIES:
            rows = [r.per_image.get(self.key(f)) for r in results]
            if any(row is not None for row in rows):
                per_family[f] = [row if row is not None else [np.nan] * n_images for row in rows]
        if not per_family:
            return [None for _ in results]
        combined = per_image_combined(per_family)
        return [None if not any(self.key(f) in r.per_image for f in FAMILIES) else [float(v) for v in row]
                for r, row in zip(results, combined, strict=True)]

    def model_details(self, result: ModelResult) -> dict[str, object]:
        """The families this model was scored with and its median consistency under each."""
        out = {}
        for f in FAMILIES:
            values = result.per_image.get(self.key(f))
            if values is not None:
                v = np.asarray(values, dtype=float)
                out[f] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
        return {"families": out}

    def aggregate(self, values: Sequence[float], *, model: str = "", seed: int = 0) -> Aggregate:
        return aggregate(values, how="mean")
