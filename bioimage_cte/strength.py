"""Automatic perturbation strength: tolerable yet differentiating, chosen from the candidates' own predictions.

The CTE paper leaves the strength to the user. Too weak a perturbation moves no model, so every candidate looks
perfectly consistent; too strong a one breaks every model, so every candidate looks equally inconsistent. Between
the two, consistency differs most between good and poor models. Without labels, :func:`choose_strength` takes, for
one perturbation family, the per-model consistency at each strength of a small grid (:data:`STRENGTH_GRIDS`) on a
few images, and picks the smallest strength whose spread between the candidates is close to the largest spread
seen, among the strengths the best candidates tolerate (their perturbed masks keep most of their clean foreground).
"""

from __future__ import annotations

#: The strengths tried per family: feature-dropout rate and Gaussian noise (fraction of the image's range). Each
#: grid holds the family's fixed default (0.2, 0.1).
STRENGTH_GRIDS: dict[str, tuple[float, ...]] = {"dropout": (0.1, 0.2, 0.35), "noise": (0.05, 0.1, 0.2)}

from collections.abc import Mapping, Sequence  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["CHOICE_IMAGES", "KEEP", "NEAR_MAX", "STRENGTH_GRIDS", "choose_strength"]

#: How many images (the first of the run's seeded order) the choice looks at.
CHOICE_IMAGES = 3
#: A strength is tolerable while the better half of the candidates keep at least this fraction of their clean
#: foreground (and do not grow it by more than its inverse).
KEEP = 0.5
#: The smallest strength whose spread is at least this fraction of the largest tolerable spread wins.
NEAR_MAX = 0.9


def choose_strength(consistency: Mapping[float, Sequence[float]], keep: Mapping[float, Sequence[float]]) -> float:
    """The smallest tolerable strength at which the candidates' consistencies differ (nearly) the most.

    Parameters
    ----------
    consistency : mapping of float to sequence of float
        Per strength, each candidate's consistency (e.g. its median over a few images); ``nan``: not scored.
    keep : mapping of float to sequence of float
        Per strength, each candidate's perturbed foreground over its clean foreground (median over the images).

    Returns
    -------
    float
        The chosen strength. When no strength is tolerable, the smallest one.

    Notes
    -----
    The spread is the standard deviation of the candidates' consistencies. A strength is tolerable when the
    candidates in the better half by consistency keep, in the median, between :data:`KEEP` and ``1 / KEEP`` of
    their clean foreground: a perturbation that erases the best models' masks measures the perturbation, not the
    models. Among tolerable strengths, the smallest whose spread reaches :data:`NEAR_MAX` of the largest wins, so a
    stronger perturbation is used only when it separates the candidates clearly better.

    Examples
    --------
    >>> choose_strength({0.1: [0.99, 0.98, 0.99], 0.2: [0.95, 0.7, 0.5], 0.4: [0.6, 0.3, 0.2]},
    ...                 {0.1: [1, 1, 1], 0.2: [0.9, 0.8, 0.6], 0.4: [0.3, 0.2, 0.1]})
    0.2
    """
    strengths = sorted(consistency)
    spreads, tolerable = {}, []
    for s in strengths:
        c, k = np.asarray(consistency[s], dtype=float), np.asarray(keep[s], dtype=float)
        ok = np.isfinite(c)
        if ok.sum() < 2:
            continue
        spreads[s] = float(np.std(c[ok]))
        better = np.argsort(-np.where(ok, c, -np.inf))[: max(1, int(ok.sum()) // 2)]
        kept = k[better]
        kept = float(np.median(kept[np.isfinite(kept)])) if np.isfinite(kept).any() else float("nan")
        if KEEP <= kept <= 1.0 / KEEP:
            tolerable.append(s)
    if not tolerable:
        return strengths[0]
    best = max(spreads[s] for s in tolerable)
    return next(s for s in tolerable if spreads[s] >= NEAR_MAX * best)
