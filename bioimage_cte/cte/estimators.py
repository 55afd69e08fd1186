"""Transferability estimators behind one small interface (their registry: :mod:`bioimage_cte.cte.registry`).

An estimator scores one model on one image, given the model's predictor and its clean
prediction of that image (computed once and shared by every estimator), and aggregates the
per-image scores into the model's score. Higher is always better.

- ``cte-dropout`` (grey-box): consistency between the clean prediction and one with channel
  dropout (rate ``strength``) at the bottleneck (CTE, arXiv 2503.00450; the authors' headline setting).
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
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from bioimage_cte.cte.consistency import (
    CONSISTENCIES,
    MULTICLASS_CONSISTENCY_FUNCTIONS,
    Aggregate,
    Consistency,
    aggregate,
    hard_consistency,
    instance_consistency,
    soft_consistency,
)
from bioimage_cte.cte.metrics import dice, foreground_dice
from bioimage_cte.cte.perturbations import (
    DEFAULT_DROPOUT,
    DEFAULT_INPUT_STRENGTH,
    InputKind,
    InputPerturbation,
    dihedral_predictions,
    perturb_image,
)
from bioimage_cte.cte.seeds import draw_seed, rng
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.segmentation import Prediction, instances


@dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """What an estimator is configured from: the run options that concern it (see ``RankOptions.estimator_config``).

    ``strength`` is the strength given as a number (None: each estimator's default); ``consistency`` the score in
    effect.
    """

    strength: float | None = None
    consistency: Consistency = "soft"
    perturbation: InputKind = "gaussian"
    repeats: int = 1
    #: the predicted-Dice calibration file whose weights ``tta+consensus`` combines with (None: the shipped one)
    calibration: str | None = None


@runtime_checkable
class Estimator(Protocol):
    """What the ranker needs from an estimator.

    The flags say how the ranker feeds it: ``needs_greybox`` (a predictor that can perturb features),
    ``needs_labels`` (scored by :meth:`score_labelled` against labels instead of :meth:`score_image`),
    ``cross_model`` (scored by :meth:`score_models` from every model's clean masks at once) and ``random`` (the
    score is a draw, not evidence from the images: no interval is resampled for it).
    """

    name: ClassVar[str]
    needs_greybox: ClassVar[bool]
    needs_labels: ClassVar[bool]
    cross_model: ClassVar[bool]
    random: ClassVar[bool]

    def settings(self) -> dict[str, object]:
        """Every parameter that changes the score, for reports and caches."""

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        """Score image number ``index`` of a run with seed ``seed`` (``nan`` when it has no foreground to score)."""

    def aggregate(self, values: Sequence[float], *, model: str, seed: int) -> Aggregate:
        """Combine one model's per-image scores into its score (``model`` and ``seed`` name a per-model draw)."""


@runtime_checkable
class Perturbing(Protocol):
    """An estimator that compares a clean prediction with perturbed ones (reports show the perturbed one)."""

    def perturbed_prediction(self, predictor, image: np.ndarray, *, seed: int, index: int,
                             repeat: int = 0) -> Prediction:
        """The prediction of one perturbed pass, with the draw that scoring uses."""


def consistency_of(clean: Prediction, perturbed: Prediction, kind: Consistency, *, threshold: float = 0.5) -> float:
    """Consistency between a clean and a perturbed prediction of one 2-D image or one 3-D model's volume.

    Multi-class predictions (``classes`` set on both) use the multi-class soft and hard forms; instances
    are always labelled from the foreground.
    """
    if kind != "instance" and clean.classes is not None and perturbed.classes is not None:
        return MULTICLASS_CONSISTENCY_FUNCTIONS[kind](clean.classes, perturbed.classes)
    if kind == "hard":
        return hard_consistency(clean.foreground, perturbed.foreground, threshold=threshold)
    if kind == "soft":
        return soft_consistency(clean.foreground, perturbed.foreground, threshold=threshold)
    return instance_consistency(instances(clean, threshold=threshold), instances(perturbed, threshold=threshold))


def _per_slice(clean: Prediction, perturbed: Prediction, kind: Consistency, threshold: float) -> float:
    """2-D scores, or one score over the voxels of a 3-D model's volume; a 2-D model's stack is scored slice by
    slice and averaged (empty slices skipped)."""
    if clean.foreground.ndim == 2 or clean.volumetric:
        return consistency_of(clean, perturbed, kind, threshold=threshold)
    values = [
        consistency_of(_slice(clean, z), _slice(perturbed, z), kind, threshold=threshold)
        for z in range(clean.foreground.shape[0])
    ]
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")


def _slice(prediction: Prediction, z: int) -> Prediction:
    boundary = None if prediction.boundary is None else prediction.boundary[z]
    classes = None if prediction.classes is None else prediction.classes[:, z]
    return Prediction(prediction.foreground[z], boundary, classes, prediction.scored)


def _check_consistency(kind: str) -> None:
    if kind not in CONSISTENCIES:
        raise ValueError(f"unknown consistency {kind!r}: use one of {', '.join(CONSISTENCIES)}")


class _MedianAggregate:
    random: ClassVar[bool] = False

    def aggregate(self, values: Sequence[float], *, model: str = "", seed: int = 0) -> Aggregate:
        return aggregate(values, how="median")

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> _MedianAggregate:
        return cls()


@dataclass(frozen=True, kw_only=True)
class _ConsistencyCTE(_MedianAggregate):
    """CTE: mean consistency of ``repeats`` perturbed predictions with the clean one; median over images."""

    consistency: Consistency = "soft"
    repeats: int = 1
    threshold: float = 0.5
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def _check_common(self) -> None:
        _check_consistency(self.consistency)
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: use 1 or more perturbed runs per image")

    def settings(self) -> dict[str, object]:
        return {"strength": self.strength, "consistency": self.consistency, "repeats": self.repeats,
                "threshold": self.threshold}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        return _nanmean([
            _per_slice(clean, self.perturbed_prediction(predictor, image, seed=seed, index=index, repeat=r),
                       self.consistency, self.threshold)
            for r in range(self.repeats)
        ])


@dataclass(frozen=True)
class CTEDropout(_ConsistencyCTE):
    """CTE with channel dropout at one layer (grey-box); model score = median consistency over images.

    ``strength`` is the dropout rate p: whole feature maps are zeroed with probability p.
    """

    strength: float = DEFAULT_DROPOUT
    name: ClassVar[str] = "cte-dropout"
    needs_greybox: ClassVar[bool] = True

    def __post_init__(self) -> None:
        FeatureDropout(self.strength, 0)  # validates the rate
        self._check_common()

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> CTEDropout:
        strength = DEFAULT_DROPOUT if config.strength is None else config.strength
        return cls(strength=strength, consistency=config.consistency, repeats=config.repeats)

    def perturbed_prediction(self, predictor, image: np.ndarray, *, seed: int, index: int,
                             repeat: int = 0) -> Prediction:
        mask_seed = draw_seed(seed, "feature-dropout", image=index, repeat=repeat)
        with predictor.perturbed(FeatureDropout(self.strength, seed=mask_seed)):
            return predictor.predict(image)


@dataclass(frozen=True)
class CTEInput(_ConsistencyCTE):
    """CTE with an input-space perturbation (black-box); model score = median consistency over images."""

    kind: InputKind = "gaussian"
    strength: float = DEFAULT_INPUT_STRENGTH
    name: ClassVar[str] = "cte-input"
    needs_greybox: ClassVar[bool] = False

    def __post_init__(self) -> None:
        InputPerturbation(self.kind, self.strength)  # validates kind and strength
        self._check_common()

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> CTEInput:
        strength = DEFAULT_INPUT_STRENGTH if config.strength is None else config.strength
        return cls(kind=config.perturbation, strength=strength, consistency=config.consistency,
                   repeats=config.repeats)

    def settings(self) -> dict[str, object]:
        return {"kind": self.kind, **super().settings()}

    def perturbed_prediction(self, predictor, image: np.ndarray, *, seed: int, index: int,
                             repeat: int = 0) -> Prediction:
        # no model in the draw: every model sees the same noise on the same image
        noise = rng(seed, f"input-{self.kind}", image=index, repeat=repeat)
        return predictor.predict(perturb_image(image, InputPerturbation(self.kind, self.strength), rng=noise))


@dataclass(frozen=True)
class CTEDihedral(_ConsistencyCTE):
    """CTE under a geometric input perturbation (black-box): a seeded random flip/rot90, the prediction mapped back.

    Each perturbed pass draws one of the 7 non-identity elements of the dihedral group from the run's seed
    (family ``"input-dihedral"``, the same element for every model on one image), so it is the consistency form of
    test-time augmentation: ``tta`` averages the hard agreement over three fixed transforms, this one scores the
    soft (or hard, instance) consistency of one random transform per pass. There is no strength.
    """

    name: ClassVar[str] = "cte-dihedral"
    needs_greybox: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._check_common()

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> CTEDihedral:
        return cls(consistency=config.consistency, repeats=config.repeats)

    def settings(self) -> dict[str, object]:
        return {"consistency": self.consistency, "repeats": self.repeats, "threshold": self.threshold}

    @staticmethod
    def transform(seed: int, index: int, repeat: int = 0) -> int:
        """The dihedral element (1..7, see :func:`~bioimage_cte.cte.perturbations.dihedral`) of one perturbed pass."""
        return int(rng(seed, "input-dihedral", image=index, repeat=repeat).integers(1, 8))

    def perturbed_prediction(self, predictor, image: np.ndarray, *, seed: int, index: int,
                             repeat: int = 0) -> Prediction:
        back = dihedral_predictions(predictor, image, [self.transform(seed, index, repeat)])[0]
        return Prediction(back.foreground, back.boundary)  # scored as a foreground (and boundary) map


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

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        p = clean.foreground
        return float(np.maximum(p, 1 - p).mean())


class NegativeEntropy(_CleanOnly):
    """Negative mean binary entropy (bits) of the clean prediction: confident maps score high."""

    name: ClassVar[str] = "entropy"

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        p = np.clip(clean.foreground.astype(np.float64), 1e-7, 1 - 1e-7)
        return float(-(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean())


#: Estimators whose per-image values under their own name are ``tta``'s consistency (the combined forms keep their tta
#: half so): what a report draws for them, and what the predicted Dice reads as the ``tta`` signal.
TTA_FORMS: tuple[str, ...] = ("tta", "tta+consensus", "tta+consensus+boundary")


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

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        views = dihedral_predictions(predictor, image, self.transforms)
        return _nanmean([_per_slice(clean, back, "hard", 0.5) for back in views])


@dataclass(frozen=True)
class MCDropoutAgreement(_MedianAggregate):
    """MC-dropout: mean pairwise Dice between ``samples`` dropout predictions (not compared with the clean one)."""

    strength: float = DEFAULT_DROPOUT
    samples: int = 4
    name: ClassVar[str] = "mc-dropout"
    needs_greybox: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        FeatureDropout(self.strength, 0)  # validates the rate
        if self.samples < 2:
            raise ValueError(f"samples={self.samples}: mc-dropout compares pairs of samples, use 2 or more")

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> MCDropoutAgreement:
        return cls(strength=DEFAULT_DROPOUT if config.strength is None else config.strength)

    def settings(self) -> dict[str, object]:
        return {"strength": self.strength, "samples": self.samples}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        masks = []
        for r in range(self.samples):
            with predictor.perturbed(FeatureDropout(self.strength, seed=draw_seed(seed, self.name, image=index,
                                                                                  repeat=r))):
                masks.append(predictor.predict(image).foreground > 0.5)
        if not any(m.any() for m in masks):
            return float("nan")
        return float(np.mean([dice(a, b) for a, b in itertools.combinations(masks, 2)]))


class ConsensusAgreement(_MedianAggregate):
    """Dice between a model's clean mask and the majority vote of every model's clean mask (per image).

    Models whose masks are the same (:data:`TWIN_AGREEMENT` of the pixels on every image: format twins of one
    network, or one package given twice) share one vote: a network is not a majority because it ships in
    several formats.
    """

    name: ClassVar[str] = "consensus"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = True

    def settings(self) -> dict[str, object]:
        return {}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        raise TypeError("consensus is a cross-model estimator: use score_models with every model's masks")

    def score_models(self, masks: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
        """``masks[m][i]`` is model m's clean mask of image i; returns per-model, per-image Dice with the vote."""
        groups = twin_groups(masks)
        votes = 1.0 / np.bincount(groups)[groups]  # each group of twins shares one vote
        scores: list[list[float]] = [[] for _ in masks]
        for i in range(len(masks[0])):
            stack = np.stack([m[i] for m in masks])
            vote = np.tensordot(votes, stack, axes=1) > 0.5 * votes.sum()
            for m in range(len(masks)):
                scores[m].append(float("nan") if not (vote.any() or stack[m].any()) else dice(stack[m], vote))
        return scores


#: Fraction of the pixels two models' masks must share on every image to count as one network (format twins differ
#: by float round-off at the 0.5 threshold only).
TWIN_AGREEMENT = 0.999


def twin_groups(masks: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Per model, the index of its group of models with the same masks (:data:`TWIN_AGREEMENT`); groups are
    numbered by their first model.

    Examples
    --------
    >>> a, b = [np.eye(4, dtype=bool)], [np.zeros((4, 4), dtype=bool)]
    >>> twin_groups([a, b, a]).tolist()
    [0, 1, 0]
    """
    group = np.arange(len(masks))
    for m, n in itertools.combinations(range(len(masks)), 2):
        if group[n] == n and group[m] == m and all(
                np.asarray(x).shape == np.asarray(y).shape and np.mean(np.asarray(x) == np.asarray(y)) >= TWIN_AGREEMENT
                for x, y in zip(masks[m], masks[n], strict=True)):
            group[n] = m
    return np.unique(group, return_inverse=True)[1]


@dataclass(frozen=True)
class RandomScore:
    """A random score per model: the floor every estimator must beat."""

    name: ClassVar[str] = "random"
    random: ClassVar[bool] = True
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        return 0.0

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> RandomScore:
        return cls()

    def aggregate(self, values: Sequence[float], *, model: str = "", seed: int = 0) -> Aggregate:
        score = float(rng(seed, self.name, model=model).random())
        return Aggregate(score, len(values), len(values), 0, score, 0.0)


@dataclass(frozen=True)
class FewLabelOracle:
    """True foreground Dice on the first ``k`` labelled images: what annotating k images would tell you."""

    k: int = 2
    name: ClassVar[str] = "few-label"
    random: ClassVar[bool] = False
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    cross_model: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        return {"k": self.k}

    def score_labelled(self, clean: Prediction, labels: np.ndarray, index: int) -> float:
        """True Dice of image ``index`` while it is one of the first ``k``, else ``nan``."""
        return foreground_dice(clean.foreground, labels) if index < self.k else float("nan")

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        raise TypeError("few-label needs labels: use score_labelled")

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> FewLabelOracle:
        return cls()

    def aggregate(self, values: Sequence[float], *, model: str = "", seed: int = 0) -> Aggregate:
        return aggregate(values, how="mean")
