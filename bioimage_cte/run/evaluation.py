"""Agreement between an estimated and a true ranking, and bootstrap intervals of model scores.

Agreement statistics compare one score per model (higher = better for both). True performance itself
(Dice, F1, mAP against labels) is :mod:`bioimage_cte.cte.metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.base.lazy import lazy_module
from bioimage_cte.cte.estimators import Estimator
from bioimage_cte.cte.metrics import METRICS
from bioimage_cte.cte.outcomes import ModelFailure, ModelResult
from bioimage_cte.run.ranking import Ranking, build_ranking, finite

stats = lazy_module("scipy.stats")  # on first use: not needed to refuse bad input

__all__ = [
    "AgreementStats",
    "Evaluation",
    "bootstrap_agreement",
    "evaluate_rankings",
    "rank_agreement",
    "true_performance",
]


@dataclass(frozen=True)
class AgreementStats:
    """Agreement between an estimated and a true ranking of the same models.

    Attributes
    ----------
    n_models : int
        Number of models compared.
    pearson : float
        Pearson r of the raw scores over the models with a finite estimate (``nan`` if fewer than 3).
    spearman, kendall : float
        Spearman rho and Kendall tau-b of the ranks (unscored models ranked last).
    weighted_tau : float
        Weighted Kendall tau with hyperbolic weights, which weigh the top of the ranking most.
    spearman_p, kendall_p : float
        Two-sided permutation-test p-values of ``spearman`` and ``kendall``.
    top1_hit : bool
        Whether the model ranked first by the estimate has the best true score.
    regret : float
        Best true score minus the true score of the model ranked first by the estimate.
    random_regret : float
        Expected regret of a uniformly random pick: best true score minus the mean.
    spearman_ci, kendall_ci : tuple of float or None
        Bootstrap confidence intervals over images from :func:`bootstrap_agreement`; ``None``
        unless attached with ``dataclasses.replace(stats, spearman_ci=..., kendall_ci=...)``.
    """

    n_models: int
    pearson: float
    spearman: float
    kendall: float
    weighted_tau: float
    spearman_p: float
    kendall_p: float
    top1_hit: bool
    regret: float
    random_regret: float
    spearman_ci: tuple[float, float] | None = None
    kendall_ci: tuple[float, float] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: ``nan`` becomes ``None`` and tuples become lists.

        Examples
        --------
        >>> stats = AgreementStats(3, float("nan"), 1.0, 1.0, 1.0, 0.33, 0.33, True, 0.0, 0.5)
        >>> stats.to_json_dict()["pearson"] is None
        True
        """

        def clean(value: Any) -> Any:
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return {key: clean(value) for key, value in asdict(self).items()}


@contextmanager
def _constant_input_is_nan() -> Iterator[None]:
    # A constant estimate (e.g. every model equally consistent) has no correlation; scipy
    # already returns nan for it, and the warning would repeat once per resample.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        with np.errstate(divide="ignore", invalid="ignore"):
            yield


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=axis) * (yc * yc).sum(axis=axis))
    return np.where(denom > 0, (xc * yc).sum(axis=axis) / np.where(denom > 0, denom, 1.0), np.nan)


def _kendall_b_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall tau-b over ``axis`` from all pairwise sign products (fine for tens of models)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    denom = np.sqrt((sx * sx).sum(axis=(-2, -1)) * (sy * sy).sum(axis=(-2, -1)))
    return np.where(denom > 0, (sx * sy).sum(axis=(-2, -1)) / np.where(denom > 0, denom, 1.0), np.nan)


def _check_models(estimated: np.ndarray, true: np.ndarray) -> None:
    if true.ndim != 1 or estimated.ndim == 0 or estimated.shape[0] != true.shape[0]:
        raise InvalidImageError(
            f"estimated and true must cover the same models, got shapes {estimated.shape} and "
            f"{true.shape}; pass one true score per model (1-D)."
        )
    if true.shape[0] < 3:
        raise InvalidImageError(
            f"rank agreement needs at least 3 models, got {true.shape[0]} (true shape {true.shape}); "
            "add models or report the raw scores."
        )
    if not np.isfinite(true).all():
        raise InvalidImageError(f"true must hold finite scores for every model, got {true.tolist()}.")


def _last_for_nan(values: np.ndarray) -> np.ndarray:
    """Replace nan by a value below every finite one, so unscored models rank last."""
    finite = values[np.isfinite(values)]
    low = finite.min() - 1.0 if finite.size else 0.0
    return np.where(np.isnan(values), low, values)


def _permutation_p(
    x: np.ndarray, y: np.ndarray, statistic: Any, observed: float, n: int, rng: np.random.Generator
) -> float:
    if math.isnan(observed):
        return math.nan
    result = stats.permutation_test(
        (x, y),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n,
        alternative="two-sided",
        rng=rng,
    )
    return float(result.pvalue)


def rank_agreement(
    estimated: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    n_permutations: int = 1000,
    rng: np.random.Generator | int | None = None,
) -> AgreementStats:
    """Compare an estimated ranking of models (e.g. CTE) with their true performance.

    A ``nan`` estimate (a model without any valid score) counts as lower than every finite
    estimate, so such models rank last (tied among themselves); Pearson r uses only the
    models with a finite estimate. The top-1 pick is the first maximum of the estimate.
    A constant input gives ``nan`` correlations and p-values.

    Parameters
    ----------
    estimated : array_like of float, shape (n_models,)
        Estimated scores, higher = better; may contain ``nan``.
    true : array_like of float, shape (n_models,)
        True performance, higher = better; finite.
    n_permutations : int, optional
        Resamples of the two-sided "pairings" permutation test (both score vectors are
        permuted, as in the CTE companion code). scipy enumerates all orderings instead when
        ``n_models! ** 2 <= n_permutations`` (up to 4 models at the default). Default 1000.
    rng : numpy.random.Generator or int or None, optional
        Randomness of the permutation tests.

    Returns
    -------
    AgreementStats
        The bootstrap interval fields are ``None``.

    Raises
    ------
    InvalidImageError
        If the shapes differ, there are fewer than 3 models, ``true`` is not finite, or
        ``n_permutations`` < 1.

    Examples
    --------
    >>> s = rank_agreement([0.9, 0.7, float("nan")], [0.8, 0.6, 0.1], rng=0)
    >>> s.spearman, s.kendall, s.top1_hit, s.regret
    (1.0, 1.0, True, 0.0)
    """
    est, tru = np.asarray(estimated, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if est.ndim != 1 or np.isinf(est).any():
        raise InvalidImageError(
            f"estimated must be 1-D (one score per model) with finite or nan scores, got shape "
            f"{est.shape}: {est.tolist()}."
        )
    _check_models(est, tru)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise InvalidImageError(f"n_permutations must be an integer >= 1, got {n_permutations!r}.")
    gen = np.random.default_rng(rng)
    filled = _last_for_nan(est)
    ok = np.isfinite(est)
    pick = int(np.argmax(filled))
    with _constant_input_is_nan():
        pearson = float(stats.pearsonr(est[ok], tru[ok]).statistic) if ok.sum() >= 3 else math.nan
        spearman = float(stats.spearmanr(filled, tru).statistic)
        kendall = float(stats.kendalltau(filled, tru).statistic)
        weighted = float(stats.weightedtau(filled, tru).statistic)
        # Spearman is Pearson on ranks, and permuting values permutes their ranks.
        rx, ry = stats.rankdata(filled), stats.rankdata(tru)
        spearman_p = _permutation_p(rx, ry, _pearson_along, spearman, n_permutations, gen)
        kendall_p = _permutation_p(filled, tru, _kendall_b_along, kendall, n_permutations, gen)
    return AgreementStats(
        n_models=int(tru.size),
        pearson=pearson,
        spearman=spearman,
        kendall=kendall,
        weighted_tau=weighted,
        spearman_p=spearman_p,
        kendall_p=kendall_p,
        top1_hit=bool(tru[pick] == tru.max()),
        regret=float(tru.max() - tru[pick]),
        random_regret=float(tru.max() - tru.mean()),
    )


def bootstrap_agreement(
    per_image_estimates: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    aggregate: Literal["median", "mean"] = "median",
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals of Spearman rho and Kendall tau over the target images.

    Each replicate resamples the image columns with replacement, aggregates every model with
    ``nanmedian``/``nanmean`` (a model with only ``nan`` ranks last, as in
    :func:`rank_agreement`) and correlates the result with ``true``. Replicates with a
    constant estimate have no correlation and are left out of the percentiles.

    Parameters
    ----------
    per_image_estimates : array_like of float, shape (n_models, n_images)
        Per-image scores; ``nan`` marks images with empty foreground.
    true : array_like of float, shape (n_models,)
        True performance, finite.
    n_boot : int, optional
        Bootstrap replicates. Default 200.
    ci : float, optional
        Coverage of the interval, in (0, 1). Default 0.95.
    rng : numpy.random.Generator or int or None, optional
        Randomness of the resampling; the same seed gives identical intervals.
    aggregate : {"median", "mean"}, optional
        Per-model statistic over images. Default "median".

    Returns
    -------
    tuple
        ``((spearman_low, spearman_high), (kendall_low, kendall_high))``; ``nan`` bounds if
        every replicate was constant.

    Raises
    ------
    InvalidImageError
        If the shapes do not fit, there are fewer than 3 models or an option is out of range.

    Examples
    --------
    >>> est = [[0.9, 0.8, 0.9], [0.5, 0.6, 0.4], [0.1, 0.2, float("nan")]]
    >>> bootstrap_agreement(est, [3.0, 2.0, 1.0], n_boot=20, rng=0)
    ((1.0, 1.0), (1.0, 1.0))
    """
    x, tru = np.asarray(per_image_estimates, dtype=np.float64), np.asarray(true, dtype=np.float64)
    _check_bootstrap_options(x, n_boot, ci, aggregate)
    _check_models(x, tru)
    gen = np.random.default_rng(rng)
    columns = gen.integers(0, x.shape[1], size=(n_boot, x.shape[1]))
    reduce = np.nanmedian if aggregate == "median" else np.nanmean
    with warnings.catch_warnings():
        # An all-nan resample of one model is expected (it then ranks last), not an error.
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = reduce(x[:, columns], axis=-1).T  # (n_boot, n_models)
    scores = _last_for_nan(scores.ravel()).reshape(scores.shape)
    targets = np.broadcast_to(tru, scores.shape)
    spearman = _pearson_along(stats.rankdata(scores, axis=-1), stats.rankdata(targets, axis=-1))
    kendall = _kendall_b_along(scores, targets)
    return _percentile_interval(spearman, ci), _percentile_interval(kendall, ci)


def _check_bootstrap_options(x: np.ndarray, n_boot: int, ci: float, aggregate: str) -> None:
    if aggregate not in ("median", "mean"):
        raise InvalidImageError(f"aggregate must be 'median' or 'mean', got {aggregate!r}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise InvalidImageError(f"n_boot must be an integer >= 1, got {n_boot!r}.")
    if not (np.isfinite(ci) and 0.0 < ci < 1.0):
        raise InvalidImageError(f"ci must lie in (0, 1), got {ci!r}; use e.g. 0.95.")
    if x.ndim != 2 or x.shape[1] == 0 or np.isinf(x).any():
        raise InvalidImageError(
            f"per_image_estimates must be (n_models, n_images) with n_images >= 1 and finite or nan "
            f"values, got shape {x.shape}."
        )


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(finite, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return (float(low), float(high))


@dataclass(frozen=True)
class Evaluation:
    """Each estimator's ranking next to the ranking by true performance on labelled images."""

    metric: str
    true: dict[str, dict[str, float]]
    rankings: dict[str, Ranking]
    agreement: dict[str, AgreementStats]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "true_performance": {m: {k: finite(v) for k, v in d.items()} for m, d in self.true.items()},
            "agreement": {k: v.to_json_dict() for k, v in self.agreement.items()},
            "rankings": {k: v.to_json_dict() for k, v in self.rankings.items()},
        }


def true_performance(results: Sequence[ModelResult]) -> dict[str, dict[str, float]]:
    """Mean of each true metric over the images, per model."""
    return {r.source.name: {k: float(np.nanmean(v)) for k, v in r.true.items()} for r in results}


def evaluate_rankings(
    results: Sequence[ModelResult],
    estimators: Sequence[Estimator],
    *,
    metric: str = "dice",
    failures: Sequence[ModelFailure] = (),
    seed: int = 0,
    n_permutations: int = 1000,
    n_boot: int = 200,
) -> Evaluation:
    """Compare each estimator's ranking with the ranking by the true ``metric`` (dice, f1 or map)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    true = true_performance(results)
    rankings, agreement = {}, {}
    for estimator in estimators:
        ranking = build_ranking(results, estimator, failures=failures, seed=seed)
        rankings[estimator.name] = ranking
        by_name = {s.name: s for s in ranking.scores}
        names = [r.source.name for r in results if r.source.name in by_name]
        if len(names) < 3:
            continue
        est = np.array([by_name[n].score for n in names])
        truth = np.array([true[n][metric] for n in names])
        stats = rank_agreement(est, truth, n_permutations=n_permutations, rng=seed)
        if not estimator.random:  # a drawn score has no per-image evidence to resample
            per_image = np.array([by_name[n].per_image for n in names], dtype=float)
            spearman_ci, kendall_ci = bootstrap_agreement(per_image, truth, n_boot=n_boot, rng=seed)
            stats = replace(stats, spearman_ci=spearman_ci, kendall_ci=kendall_ci)
        agreement[estimator.name] = stats
    return Evaluation(metric, true, rankings, agreement)
