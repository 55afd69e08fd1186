"""Every estimator by its name, and how options become one.

The command line's ``--estimator`` choices, ``bioimage-cte evaluate``'s label-free set and the validation of
:class:`bioimage_cte.run.options.RankOptions` all come from :data:`ESTIMATORS`. A new estimator is a class in
:mod:`bioimage_cte.cte.estimators` (or a module of its own) added here.
"""

from __future__ import annotations

from bioimage_cte.cte.combined import CTECombined
from bioimage_cte.cte.estimators import (
    ConsensusAgreement,
    CTEDihedral,
    CTEDropout,
    CTEInput,
    Estimator,
    EstimatorConfig,
    FewLabelOracle,
    MCDropoutAgreement,
    MeanConfidence,
    NegativeEntropy,
    RandomScore,
    TTAAgreement,
)
from bioimage_cte.cte.tta_consensus import TTAConsensus
from bioimage_cte.cte.tta_consensus_boundary import TTAConsensusBoundary

__all__ = ["AUTO_STRENGTH", "ESTIMATORS", "LABEL_FREE", "EstimatorConfig", "make_estimator"]

#: Every estimator by its name.
ESTIMATORS: dict[str, type] = {
    cls.name: cls
    for cls in (CTECombined, CTEDropout, CTEInput, CTEDihedral, MeanConfidence, NegativeEntropy, TTAAgreement,
                TTAConsensus, TTAConsensusBoundary, MCDropoutAgreement, ConsensusAgreement, RandomScore, FewLabelOracle)
}

#: Label-free estimators compared side by side by ``bioimage-cte evaluate``.
LABEL_FREE = tuple(name for name, cls in ESTIMATORS.items() if not cls.needs_labels)

#: Estimators whose strength ``"auto"`` can choose (:mod:`bioimage_cte.run.strength`).
AUTO_STRENGTH: tuple[str, ...] = ("cte", "cte-dropout", "cte-input")


def make_estimator(name: str, config: EstimatorConfig | None = None) -> Estimator:
    """The estimator ``name``, configured by ``config`` (strength, consistency, perturbation, repeats).

    Examples
    --------
    >>> make_estimator("cte-dropout", EstimatorConfig(strength=0.3)).settings()["strength"]
    0.3
    >>> make_estimator("tta").settings()
    {'transforms': [1, 2, 4]}
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}: use one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name].from_config(config or EstimatorConfig())
