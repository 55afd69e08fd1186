"""Adaptive image budget: score images in a seeded random order and stop once the ranking's top is settled.

After each image (from :data:`MIN_IMAGES` on) :func:`lead_is_settled` resamples the images scored so far with
replacement, recomputes every model's score on each resample with the estimator's own scoring (the median of
per-image values, or the cross-model combination of ``cte``), and looks at the lead of the current top-1 model over
the runner-up. The run stops when the two-sided :data:`LEVEL` bootstrap interval of that lead lies above zero
("settled"), or when every image is scored ("all images"), or at a fixed number of images (``--budget N``).
The same function decides in ``rank`` and in ``benchmarks/budget.py``, which replays it on stored per-image values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bioimage_cte.seeds import rng

__all__ = ["LEVEL", "MIN_IMAGES", "N_BOOT", "image_order", "lead_is_settled", "parse_budget", "stop_reason"]

#: Fewest images before the lead is tested: a bootstrap over two or three images says nothing.
MIN_IMAGES = 4
#: Two-sided level of the bootstrap interval of the lead.
LEVEL = 0.95
#: Bootstrap resamples per test.
N_BOOT = 200

ScoreFn = Callable[[Sequence[int]], np.ndarray]


def parse_budget(value: str | int) -> int | str:
    """``"auto"``, ``"all"`` or a positive image count; anything else is a one-line error."""
    if isinstance(value, str) and value in ("auto", "all"):
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"budget {value!r}: use 'auto' (stop when the top model is settled), 'all', or a number of "
                         "images >= 1")
    return n


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
