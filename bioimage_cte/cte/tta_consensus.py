"""``tta+consensus``: within-model consistency and cross-model agreement, combined into each image's predicted Dice.

``tta`` (hard agreement of three fixed flips/rotations, mapped back, with the clean prediction) cannot see a model
that is consistently wrong, and a model trained longer or by another recipe is more equivariant whether or not it
fits the target (issue #25: the specification's ``unet2d_nuclei_broad`` scored 0.97-0.99 on every target). Agreement
with the majority vote of every candidate's clean masks (``consensus``) sees exactly that, and misses what ``tta``
sees (a lone right model). Per image the two are combined with the weights of the predicted-Dice calibration
(:mod:`bioimage_cte.cte.calibration`: least squares of true Dice on the two signals over the labelled demo targets),
clipped to [0, 1], and a model's score is the median over its images: the models are ranked by how good each image's
segmentation is expected to be. Chosen on seven development groups, two of them with models of other training
recipes (``benchmarks/results/robust_default_protocol.md``). Without a calibration the two signals are ranked across
the candidates per image and the ranks averaged (no weight fitted), the score being their mean over images.

The consensus needs every candidate's clean masks at once, so it is a second stage after all models ran
(:meth:`TTAConsensus.score_results`; a zoo run keeps the masks in its results store and ranks each target once all
its models ran). With fewer than :data:`MIN_CONSENSUS_MODELS` candidates holding masks (or masks too large to
store, :data:`bioimage_cte.run.store.MAX_STORED_MASK_PIXELS`) the score is ``tta``'s own consistency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bioimage_cte.cte.combined import per_image_combined
from bioimage_cte.cte.consistency import Aggregate, aggregate
from bioimage_cte.cte.estimators import ConsensusAgreement, EstimatorConfig, TTAAgreement
from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.predict.segmentation import Prediction

__all__ = ["MIN_CONSENSUS_MODELS", "TTAConsensus", "consensus_of"]

#: Fewest candidates with masks for the consensus half (a majority of two is their intersection).
MIN_CONSENSUS_MODELS = 3


def consensus_of(results: Sequence[ModelResult], key: str) -> list[list[float] | None]:
    """Per model scored under ``key``, its Dice with the candidates' majority vote per image (None: no masks, not
    scored, or fewer than :data:`MIN_CONSENSUS_MODELS` such models)."""
    usable = [i for i, r in enumerate(results) if r.masks and r.per_image.get(key) is not None]
    if len(usable) < MIN_CONSENSUS_MODELS or len({len(results[i].masks) for i in usable}) != 1:
        return [None for _ in results]
    values = iter(ConsensusAgreement().score_models([results[i].masks for i in usable]))
    return [next(values) if i in usable else None for i in range(len(results))]


@dataclass(frozen=True)
class TTAConsensus:
    """Per image, the predicted Dice from a model's ``tta`` and ``consensus`` (``weights``: intercept, tta and
    consensus weights of the calibration), or without weights the mean of its ranks among the candidates under
    each."""

    transforms: tuple[int, ...] = (1, 2, 4)
    weights: tuple[float, float, float] | None = None
    name: ClassVar[str] = "tta+consensus"
    needs_greybox: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    cross_model: ClassVar[bool] = False
    random: ClassVar[bool] = False
    #: the run keeps every model's clean masks for the second stage
    keeps_masks: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: EstimatorConfig) -> TTAConsensus:
        """With the weights of the calibration ``config.calibration`` names (default: the shipped one)."""
        from pathlib import Path

        from bioimage_cte.cte.calibration import load_calibration

        calibration = load_calibration(None if config.calibration is None else Path(config.calibration))
        fit = next((f for f in calibration.fits if f.features == ("tta", "consensus")), None) if calibration else None
        return cls(weights=None if fit is None else (fit.intercept, *fit.weights))

    def settings(self) -> dict[str, object]:
        if self.weights is None:
            return {"transforms": list(self.transforms), "signals": ["tta", "consensus"],
                    "combination": "mean of per-signal ranks across the candidates, per image"}
        return {"transforms": list(self.transforms), "signals": ["tta", "consensus"],
                "combination": "predicted Dice per image (intercept + weights x signals, clipped to [0, 1]), median "
                               "over the images", "weights": [round(w, 6) for w in self.weights]}

    def score_image(self, predictor, image: np.ndarray, clean: Prediction, *, seed: int, index: int) -> float:
        """The ``tta`` half on one image (the consensus half needs every model: :meth:`score_results`)."""
        return TTAAgreement(self.transforms).score_image(predictor, image, clean, seed=seed, index=index)

    def consensus(self, results: Sequence[ModelResult]) -> list[list[float] | None]:
        """Per model, its Dice with the candidates' majority vote per image (None: no masks, or too few models)."""
        return consensus_of(results, self.name)

    def score_results(self, results: Sequence[ModelResult]) -> list[list[float] | None]:
        """Per model, its combined value per image (None for a model ``tta`` did not score)."""
        tta = [r.per_image.get(self.name) for r in results]
        n_images = max((len(v) for v in tta if v is not None), default=0)
        if n_images == 0:
            return [None for _ in results]
        consensus = self.consensus(results)
        if all(c is None for c in consensus):  # one stage only: tta's own values (its score, mean over images)
            return [None if v is None else [float(x) for x in v] for v in tta]
        signals = {"tta": [v if v is not None else [np.nan] * n_images for v in tta],
                   "consensus": [c if c is not None else [np.nan] * n_images for c in consensus]}
        if self.weights is None:
            combined = per_image_combined(signals)
        else:
            intercept, w_tta, w_consensus = self.weights
            combined = np.clip(intercept + w_tta * np.asarray(signals["tta"], dtype=float)
                               + w_consensus * np.asarray(signals["consensus"], dtype=float), 0.0, 1.0)
        # an image tta could not score (no foreground, clean or flipped) stays empty: counted as such, not ranked
        out: list[list[float] | None] = []
        for v, row in zip(tta, combined, strict=True):
            out.append(None if v is None else [float(x) if np.isfinite(t) else float("nan")
                                               for x, t in zip(row, v, strict=True)])
        return out

    def model_details(self, result: ModelResult) -> dict[str, object]:
        """The model's median ``tta`` consistency (the consensus is in its predicted Dice's signals)."""
        v = np.asarray(result.per_image.get(self.name) or [], dtype=float)
        return {"tta": float(np.nanmedian(v)) if np.isfinite(v).any() else None}

    def aggregate(self, values: Sequence[float], *, model: str = "", seed: int = 0) -> Aggregate:
        return aggregate(values, how="mean" if self.weights is None else "median")
