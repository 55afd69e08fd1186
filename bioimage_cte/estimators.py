"""Transferability estimators behind one small interface, and their registry.

An estimator scores one model on one image, given the model's predictor and its clean
prediction of that image (computed once and shared by every estimator), and aggregates the
per-image scores into the model's score. Higher is always better.

- ``cte-dropout`` (grey-box): consistency between the clean prediction and one with channel
  dropout at the bottleneck (CTE, arXiv 2503.00450; the authors' headline setting).
- ``cte-input`` (black-box): consistency under an input perturbation (Gaussian noise by default).

Both default to the *soft* consistency (effective invariance), which also scores how confident the
agreeing pixels are: a model whose output hovers around 0.5 keeps its thresholded mask under any
perturbation and would look perfectly consistent to the *hard* score. On the demo zoo's nuclei
family soft raised CTE-dropout's mean Spearman from 0.41 to 0.72 (see benchmarks/); ``hard`` remains
available.
- Label-free baselines on the same predictions: ``confidence`` (mean max-probability),
  ``entropy`` (negative mean binary entropy), ``tta`` (agreement of flipped/rotated predictions with the
  clean one), ``mc-dropout`` (mean pairwise Dice of several dropout samples), ``consensus``
  (Dice with the majority vote of all models; needs every model's clean masks) and ``random``.
- ``few-label`` (needs labels, not label-free): true Dice on the first ``k`` labelled images, the
  reference a user could otherwise afford by annotating a few images.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from bioimage_cte.consistency import (
    Aggregate,
    aggregate,
    hard_consistency,
    instance_consistency,
    soft_consistency,
)
from bioimage_cte.evaluation import dice, foreground_dice
from bioimage_cte.perturbations import (
    DEFAULT_DROPOUT,
    DEFAULT_INPUT_STRENGTH,
    FeatureDropout,
    InputKind,
    InputPerturbation,
    dihedral,
    perturb_image,
    undo_dihedral,
)
from bioimage_cte.segmentation import label_foreground, watershed_from_boundaries

if TYPE_CHECKING:
    from bioimage_cte.predictors import Prediction

Consistency = Literal["hard", "soft", "instance"]
CONSISTENCIES: tuple[Consistency, ...] = ("hard", "soft", "instance")


@runtime_checkable
class Estimator(Protocol):
    """What the ranker needs from an estimator."""

    name: ClassVar[str]
    needs_greybox: ClassVar[bool]
    needs_labels: ClassVar[bool]
    cross_model: ClassVar[bool]

    def settings(self) -> dict[str, object]:
        """Every parameter that changes the score, for reports and caches."""

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        """Score one image (``nan`` when it has no foreground to score)."""

    def aggregate(self, values: Sequence[float]) -> Aggregate:
        """Combine per-image scores into the model's score."""


def instances(prediction: Prediction, *, threshold: float = 0.5, min_size: int = 16) -> np.ndarray:
    """Instance labels of a prediction: seeded watershed when it has a boundary channel, else components."""
    if prediction.boundary is not None:
        return watershed_from_boundaries(prediction.foreground, prediction.boundary, threshold=threshold,
                                         min_size=min_size)
    return label_foreground(prediction.foreground, threshold=threshold, min_size=min_size)


def consistency_of(clean: Prediction, perturbed: Prediction, kind: Consistency, *, threshold: float = 0.5) -> float:
    """Consistency between a clean and a perturbed prediction of one 2-D image."""
    if kind == "hard":
        return hard_consistency(clean.foreground, perturbed.foreground, threshold=threshold)
    if kind == "soft":
        return soft_consistency(clean.foreground, perturbed.foreground, threshold=threshold)
    return instance_consistency(instances(clean, threshold=threshold), instances(perturbed, threshold=threshold))


def _per_slice(clean: Prediction, perturbed: Prediction, kind: Consistency, threshold: float) -> float:
    """2-D scores; a stack's slices are scored one by one and averaged (empty slices skipped)."""
    if clean.foreground.ndim == 2:
        return consistency_of(clean, perturbed, kind, threshold=threshold)
    values = [
        consistency_of(_slice(clean, z), _slice(perturbed, z), kind, threshold=threshold)
        for z in range(clean.foreground.shape[0])
    ]
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")


def _slice(prediction: Prediction, z: int) -> Prediction:
    from bioimage_cte.predictors import Prediction

    boundary = None if prediction.boundary is None else prediction.boundary[z]
    return Prediction(prediction.foreground[z], boundary)


def _check_consistency(kind: str) -> None:
    if kind not in CONSISTENCIES:
        raise ValueError(f"unknown consistency {kind!r}: use one of {', '.join(CONSISTENCIES)}")


class _MedianAggregate:
    def aggregate(self, values: Sequence[float]) -> Aggregate:
        return aggregate(values, how="median")


@dataclass(frozen=True)
class CTEDropout(_MedianAggregate):
    """CTE with channel dropout at one layer (grey-box); model score = median consistency over images."""

    p: float = DEFAULT_DROPOUT
    consistency: Consistency = "soft"
    repeats: int = 1
    threshold: float = 0.5
    name: ClassVar[str] = "cte-dropout"
    needs_greybox: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        FeatureDropout(self.p, 0)  # validates p
        _check_consistency(self.consistency)
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: use 1 or more perturbed runs per image")

    def settings(self) -> dict[str, object]:
        return {"p": self.p, "consistency": self.consistency, "repeats": self.repeats, "threshold": self.threshold}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        values = []
        for r in range(self.repeats):
            with predictor.perturbed(FeatureDropout(self.p, seed=seed * 1000 + r)):
                perturbed = predictor.predict(image)
            values.append(_per_slice(clean, perturbed, self.consistency, self.threshold))
        return _nanmean(values)


@dataclass(frozen=True)
class CTEInput(_MedianAggregate):
    """CTE with an input-space perturbation (black-box); model score = median consistency over images."""

    kind: InputKind = "gaussian"
    strength: float = DEFAULT_INPUT_STRENGTH
    consistency: Consistency = "soft"
    repeats: int = 1
    threshold: float = 0.5
    name: ClassVar[str] = "cte-input"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        InputPerturbation(self.kind, self.strength)  # validates kind and strength
        _check_consistency(self.consistency)
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: use 1 or more perturbed runs per image")

    def settings(self) -> dict[str, object]:
        return {"kind": self.kind, "strength": self.strength, "consistency": self.consistency,
                "repeats": self.repeats, "threshold": self.threshold}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        values = []
        for r in range(self.repeats):
            # The same seed for every model: each model sees the same noise on the same image.
            noisy = perturb_image(image, InputPerturbation(self.kind, self.strength), rng=[seed, r])
            values.append(_per_slice(clean, predictor.predict(noisy), self.consistency, self.threshold))
        return _nanmean(values)


def _nanmean(values: Sequence[float]) -> float:
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")


class _CleanOnly(_MedianAggregate):
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {}


class MeanConfidence(_CleanOnly):
    """Mean max-probability max(p, 1 - p) over all pixels of the clean prediction."""

    name: ClassVar[str] = "confidence"

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        p = clean.foreground
        return float(np.maximum(p, 1 - p).mean())


class NegativeEntropy(_CleanOnly):
    """Negative mean binary entropy (bits) of the clean prediction: confident maps score high."""

    name: ClassVar[str] = "entropy"

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        p = np.clip(clean.foreground.astype(np.float64), 1e-7, 1 - 1e-7)
        return float(-(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean())


@dataclass(frozen=True)
class TTAAgreement(_MedianAggregate):
    """Test-time augmentation: mean hard consistency of flip/rot90 predictions (mapped back) with the clean one."""

    transforms: tuple[int, ...] = (1, 2, 4)
    name: ClassVar[str] = "tta"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {"transforms": list(self.transforms)}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        from bioimage_cte.predictors import Prediction

        values = []
        for k in self.transforms:
            out = predictor.predict(np.ascontiguousarray(dihedral(image, k)))
            back = Prediction(np.ascontiguousarray(undo_dihedral(out.foreground, k)))
            values.append(_per_slice(clean, back, "hard", 0.5))
        return _nanmean(values)


@dataclass(frozen=True)
class MCDropoutAgreement(_MedianAggregate):
    """MC-dropout: mean pairwise Dice between ``samples`` dropout predictions (not compared with the clean one)."""

    p: float = DEFAULT_DROPOUT
    samples: int = 4
    name: ClassVar[str] = "mc-dropout"
    needs_greybox: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {"p": self.p, "samples": self.samples}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        masks = []
        for r in range(self.samples):
            with predictor.perturbed(FeatureDropout(self.p, seed=seed * 1000 + 500 + r)):
                masks.append(predictor.predict(image).foreground > 0.5)
        if not any(m.any() for m in masks):
            return float("nan")
        return float(np.mean([dice(a, b) for a, b in itertools.combinations(masks, 2)]))


class ConsensusAgreement(_MedianAggregate):
    """Dice between a model's clean mask and the majority vote of every model's clean mask (per image)."""

    name: ClassVar[str] = "consensus"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = True

    def settings(self) -> dict[str, object]:
        return {}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        raise TypeError("consensus is a cross-model estimator: use score_models with every model's masks")

    def score_models(self, masks: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
        """``masks[m][i]`` is model m's clean mask of image i; returns per-model, per-image Dice with the vote."""
        scores: list[list[float]] = [[] for _ in masks]
        for i in range(len(masks[0])):
            stack = np.stack([m[i] for m in masks])
            vote = stack.mean(axis=0) > 0.5
            for m in range(len(masks)):
                scores[m].append(float("nan") if not (vote.any() or stack[m].any()) else dice(stack[m], vote))
        return scores


@dataclass(frozen=True)
class RandomScore:
    """A random score per model: the floor every estimator must beat."""

    name: ClassVar[str] = "random"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        return 0.0

    def aggregate(self, values: Sequence[float]) -> Aggregate:
        # The model's name is not known here, so the ranker draws the random score; this keeps the interface.
        return aggregate(values, how="mean")


@dataclass(frozen=True)
class FewLabelOracle:
    """True foreground Dice on the first ``k`` labelled images: what annotating k images would tell you."""

    k: int = 2
    name: ClassVar[str] = "few-label"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {"k": self.k}

    def score_labelled(self, clean: Prediction, labels: np.ndarray, index: int) -> float:
        return foreground_dice(clean.foreground, labels) if index < self.k else float("nan")

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int) -> float:
        raise TypeError("few-label needs labels: use score_labelled")

    def aggregate(self, values: Sequence[float]) -> Aggregate:
        return aggregate(values, how="mean")


#: Every estimator by its name (the CLI's choices come from here).
ESTIMATORS: dict[str, type] = {
    cls.name: cls
    for cls in (CTEDropout, CTEInput, MeanConfidence, NegativeEntropy, TTAAgreement, MCDropoutAgreement,
                ConsensusAgreement, RandomScore, FewLabelOracle)
}

#: Label-free estimators compared side by side by ``bioimage-cte evaluate``.
LABEL_FREE = ("cte-dropout", "cte-input", "confidence", "entropy", "tta", "mc-dropout", "consensus", "random")


def make_estimator(name: str, **options: object) -> Estimator:
    """Build an estimator by name, passing only the options its dataclass takes.

    Examples
    --------
    >>> make_estimator("cte-dropout", p=0.3, strength=0.5).settings()["p"]
    0.3
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}: use one of {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    fields = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in options.items() if k in fields and v is not None})
