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

import dataclasses  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.zoo.sources import ModelSource

__all__ = ["CHOICE_IMAGES", "KEEP", "NEAR_MAX", "STRENGTH_GRIDS", "choose_strength", "with_automatic_strength"]

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


#: The strength field of each estimator, per family it perturbs with.
_FIELDS: dict[str, dict[str, str]] = {"cte-dropout": {"dropout": "strength"}, "cte-input": {"noise": "strength"},
                                      "cte": {"dropout": "dropout", "noise": "noise"}}


def _family_estimator(family: str, strength: float, options: RankOptions):
    from bioimage_cte.cte.estimators import CTEDropout, CTEInput

    if family == "dropout":
        return CTEDropout(strength=strength, consistency=options.consistency_kind)
    return CTEInput(kind="gaussian" if options.estimator == "cte" else options.perturbation, strength=strength,
                    consistency=options.consistency_kind)


def with_automatic_strength(sources: Sequence[ModelSource], image_paths: Sequence[Path], estimator: Any,
                            options: RankOptions, *,
                            on_stage: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """``estimator`` with each family's strength chosen by :func:`choose_strength`, and what the choice saw.

    Every candidate predicts the first :data:`CHOICE_IMAGES` images of the run's seeded order
    (:func:`bioimage_cte.run.budget.image_order`) clean and at every strength of the family's grid, with the draws of
    the real run (same seed, same image index). A model that cannot be loaded, or is not grey-box for the dropout
    family, is left out of the choice (the ranking records its failure later). ``on_stage`` gets a line as each
    model starts (this takes a while: every strength of the grid on every image).
    """
    from bioimage_cte.cte.consistency import aggregate
    from bioimage_cte.cte.estimators import _per_slice
    from bioimage_cte.predict.images import load_target
    from bioimage_cte.run.budget import image_order
    from bioimage_cte.run.scoring import ModelRun

    fields = _FIELDS[options.estimator]
    subset = image_order(len(image_paths), options.seed)[:CHOICE_IMAGES]
    images = {i: load_target(image_paths[i], axes=options.axes) for i in subset}
    cons: dict[str, dict[float, list[float]]] = {f: {s: [] for s in STRENGTH_GRIDS[f]} for f in fields}
    keep: dict[str, dict[float, list[float]]] = {f: {s: [] for s in STRENGTH_GRIDS[f]} for f in fields}
    probe = [_family_estimator(f, STRENGTH_GRIDS[f][0], options) for f in fields]
    for number, source in enumerate(sources, start=1):
        if on_stage is not None:
            on_stage(f"choosing the strength on {len(subset)} images: model {number}/{len(sources)} {source.name}")
        try:
            run = ModelRun(source, probe, options)
            if run.idle:
                continue
            with run:
                values = {(f, s): ([], []) for f in fields for s in STRENGTH_GRIDS[f]}
                for i, image in images.items():
                    clean = run.predictor.predict(image)
                    n_clean = float((clean.foreground > 0.5).sum())
                    for f in fields:
                        if f == "dropout" and not run.greybox:
                            continue
                        for s in STRENGTH_GRIDS[f]:
                            out = _family_estimator(f, s, options).perturbed_prediction(run.predictor, image,
                                                                                        seed=options.seed, index=i)
                            values[f, s][0].append(_per_slice(clean, out, options.consistency_kind, 0.5))
                            values[f, s][1].append(float((out.foreground > 0.5).sum()) / n_clean if n_clean
                                                   else float("nan"))
        except Exception:  # noqa: BLE001 -- a broken model is recorded by the ranking itself, not here
            continue
        for (f, s), (c, k) in values.items():
            finite_k = [v for v in k if np.isfinite(v)]
            cons[f][s].append(aggregate(c, how="median").score if c else float("nan"))
            keep[f][s].append(float(np.median(finite_k)) if finite_k else float("nan"))
    chosen = {f: choose_strength(cons[f], keep[f]) for f in fields}
    info = {"automatic_strength": {f: {"chosen": chosen[f], "grid": list(STRENGTH_GRIDS[f]),
                                       "images": [Path(image_paths[i]).name for i in subset]} for f in fields}}
    return dataclasses.replace(estimator, **{fields[f]: chosen[f] for f in fields}), info
