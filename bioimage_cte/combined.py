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

Ranks need the other candidates, so ``cte`` is a cross-model estimator: per image each model records one consistency
value per family, and :func:`combine` is computed once all models are scored (and again on each bootstrap resample
of the images, for the intervals and the adaptive budget).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["FAMILIES", "combine", "family_scores", "normalised_ranks"]

#: Perturbation families of ``cte``, in the order they are run per image.
FAMILIES: tuple[str, ...] = ("dropout", "dihedral", "noise")


def normalised_ranks(scores: Sequence[float]) -> np.ndarray:
    """Ranks of the finite ``scores`` scaled to [0, 1] (1: highest; ties share their mean rank); ``nan`` stays.

    A family that scored a single model, or gave every model the same score, puts them all at 0.5.

    Examples
    --------
    >>> normalised_ranks([0.9, 0.5, float("nan"), 0.7]).tolist()
    [1.0, 0.0, nan, 0.5]
    """
    from scipy.stats import rankdata

    x = np.asarray(scores, dtype=float)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        out[ok] = (rankdata(x[ok]) - 1.0) / (n - 1.0)
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
