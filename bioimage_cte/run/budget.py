"""Adaptive image budget: score images in a seeded random order and stop once the ranking's top is settled.

After each image (from :data:`MIN_IMAGES` on) :func:`lead_is_settled` resamples the images scored so far with
replacement, recomputes every model's score on each resample with the estimator's own scoring (the median of
per-image values, or the cross-model combination of ``cte``), and looks at the lead of the current top-1 model over
the runner-up. The run stops when the two-sided :data:`LEVEL` bootstrap interval of that lead lies above zero
("settled"), or when every image is scored ("all images"), or at a fixed number of images (``--budget N``).
The same function decides in ``rank`` and in ``benchmarks/budget.py``, which replays it on stored per-image values.

:func:`rank_adaptive` keeps every model loaded (one :class:`~bioimage_cte.run.scoring.ModelRun` each) and scores the
images one at a time across all of them, so no model is loaded twice; the per-image draws are named by the image's
place in the full list, so every value equals the one a full run computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bioimage_cte.cte.seeds import rng

if TYPE_CHECKING:
    from bioimage_cte.cte.estimators import Estimator
    from bioimage_cte.cte.outcomes import ModelFailure, ModelResult
    from bioimage_cte.predict.images import ImageCache
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.zoo.sources import ModelSource

__all__ = ["LEVEL", "MIN_IMAGES", "N_BOOT", "AdaptiveRun", "image_order", "lead_is_settled",
           "rank_adaptive", "scores_of", "stop_reason"]

#: Fewest images before the lead is tested: a bootstrap over two or three images says nothing.
MIN_IMAGES = 4
#: Two-sided level of the bootstrap interval of the lead.
LEVEL = 0.95
#: Bootstrap resamples per test.
N_BOOT = 200

ScoreFn = Callable[[Sequence[int]], np.ndarray]


def image_order(n_images: int, seed: int) -> list[int]:
    """The run's seeded order of the images (the same for every model)."""
    return [int(i) for i in rng(seed, "budget-order").permutation(n_images)]


def lead_is_settled(score: ScoreFn, n_scored: int, *, seed: int, n_boot: int = N_BOOT, level: float = LEVEL) -> bool:
    """Whether the top-1 model's lead over the runner-up stays above zero across bootstrap resamples of the images.

    Parameters
    ----------
    score : callable
        ``score(images)`` -> every model's score (``nan``: unscored) from the images at those positions (repeats
        allowed); higher is better.
    n_scored : int
        Images scored so far (positions ``0 .. n_scored - 1``).
    seed : int
        Run seed (the resamples are the draw ``"budget-bootstrap"`` of this image count).

    Returns
    -------
    bool
        True when the lower end of the two-sided ``level`` interval of the lead is above zero.
    """
    if n_scored < MIN_IMAGES:
        return False
    full = np.asarray(score(range(n_scored)), dtype=float)
    ok = np.flatnonzero(np.isfinite(full))
    if ok.size < 2:
        return ok.size == 1
    order = ok[np.argsort(-full[ok], kind="stable")]
    leader, runner = int(order[0]), int(order[1])
    gen = rng(seed, "budget-bootstrap", image=n_scored)
    leads = np.empty(n_boot)
    for b in range(n_boot):
        s = np.asarray(score(gen.integers(0, n_scored, n_scored).tolist()), dtype=float)
        leads[b] = s[leader] - s[runner] if np.isfinite(s[leader]) and np.isfinite(s[runner]) else -np.inf
    return bool(np.quantile(leads, (1.0 - level) / 2.0) > 0.0)


def stop_reason(budget: int | str, n_scored: int, n_images: int, settled: bool) -> str | None:
    """Why scoring stops after ``n_scored`` images, or None to go on."""
    if settled and budget == "auto":
        return "settled"
    if n_scored >= n_images:
        return "all images"
    if isinstance(budget, int) and n_scored >= budget:
        return "budget"
    return None


def scores_of(per_image: Sequence[Sequence[float] | None], estimator: Estimator, positions: Sequence[int],
              names: Sequence[str] = ()) -> np.ndarray:
    """Every model's score from its per-image values at ``positions`` (``nan`` for a model without values)."""
    out = np.full(len(per_image), np.nan)
    for m, row in enumerate(per_image):
        if row is not None and len(positions):
            name = names[m] if names else ""
            out[m] = estimator.aggregate([row[p] for p in positions], model=name, seed=0).score
    return out


@dataclass(frozen=True)
class AdaptiveRun:
    """The results of an adaptive run and how it ended."""

    results: list[ModelResult]
    failures: list[ModelFailure]
    #: the images scored, in the order they were scored (every result's per-image values follow it)
    images: list[Path]
    stop_reason: str


def rank_adaptive(sources: Sequence[ModelSource], image_paths: Sequence[Path], estimator: Estimator,
                  options: RankOptions, *, on_image: Callable[[], None] | None = None,
                  on_model: Callable[[ModelSource], None] | None = None,
                  on_round: Callable[[int, int], None] | None = None,
                  images: ImageCache | None = None) -> AdaptiveRun:
    """Score the images in the run's seeded order across every model until :func:`stop_reason` says stop.

    ``options.budget`` is ``"auto"`` (stop when settled), a number of images, or ``"all"``. Every model stays
    loaded for the run. A model that fails is recorded and the others go on, as in
    :func:`~bioimage_cte.run.scoring.rank_models`; the images are decoded once for all of them (``images``).
    ``on_model`` is called as each model loads (all before the first image), ``on_round(i, n)`` before image ``i``
    of at most ``n`` is scored by every model, ``on_image`` after each model x image.
    """
    from bioimage_cte.cte.outcomes import failure_of
    from bioimage_cte.run.ranking import per_image_scores
    from bioimage_cte.run.scoring import ModelRun

    budget = options.budget
    order = image_order(len(image_paths), options.seed)
    failures: list[ModelFailure] = []
    idle: list[ModelResult] = []
    runs: list[ModelRun] = []
    reason = "all images"
    n_scored = 0
    with contextlib.ExitStack() as stack:
        for source in sources:
            if on_model is not None:
                on_model(source)
            try:
                run = ModelRun(source, [estimator], options, images=images)
                if run.idle:
                    idle.append(run.result())
                    continue
                runs.append(stack.enter_context(run))
            except Exception as e:  # one broken zoo entry must never stop the run
                failures.append(failure_of(source, e))
        for n_scored, index in enumerate(order, start=1):
            if on_round is not None:
                on_round(n_scored, len(order))
            alive = []
            for run in runs:
                try:
                    run.score(index, image_paths[index])
                    alive.append(run)
                except Exception as e:
                    failures.append(failure_of(run.source, e))
                if on_image is not None:
                    on_image()
            runs = alive
            settled = False
            if budget == "auto" and len(runs) > 1:
                per_image = per_image_scores([r.result() for r in runs], estimator)
                names = [r.source.name for r in runs]
                settled = lead_is_settled(lambda pos, p=per_image, n=names: scores_of(p, estimator, pos, n),
                                          n_scored, seed=options.seed)
            stop = stop_reason(budget, n_scored, len(image_paths), settled)
            if stop is not None:
                reason = stop
                break
    results = [r.result() for r in runs] + idle
    return AdaptiveRun(results, failures, [image_paths[i] for i in order[:n_scored]], reason)
