"""Known-answer and reference tests of bioimage_cte.cte.metrics and bioimage_cte.run.evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.cte.metrics import (
    DSB_THRESHOLDS,
    average_precision,
    dice,
    foreground_dice,
    instance_f1,
    match_instances,
    mean_average_precision,
)
from bioimage_cte.run.evaluation import AgreementStats, bootstrap_agreement, rank_agreement


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ---------------------------------------------------------------------------- semantic


def test_dice_hand_cases() -> None:
    a = np.array([True, True, True, False])
    b = np.array([True, False, False, False])
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(2 * 1 / (3 + 1))
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # both empty: perfect agreement


def test_foreground_dice_uses_labels_above_zero() -> None:
    prob = np.array([[0.9, 0.8, 0.3, 0.1]])
    labels = np.array([[2, 0, 5, 0]])
    # P = {0, 1}, T = {0, 2}: 2 * 1 / (2 + 2) = 0.5
    assert foreground_dice(prob, labels) == 0.5
    assert foreground_dice(prob, labels, threshold=0.2) == pytest.approx(2 * 2 / (3 + 2))


def test_dice_bad_input_raises() -> None:
    with pytest.raises(InvalidImageError, match="boolean"):
        dice(np.ones(3), np.ones(3, bool))
    with pytest.raises(InvalidImageError, match=r"\(3,\) and \(4,\)"):
        dice(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(InvalidImageError, match=r"\(2, 2\) and \(2, 3\)"):
        foreground_dice(np.ones((2, 2)), np.ones((2, 3), int))


# ---------------------------------------------------------------------------- instances


def test_match_instances_iou_matrix() -> None:
    true = np.array([[1, 1, 1, 0, 4, 4]])
    pred = np.array([[0, 9, 9, 9, 4, 0]])
    iou = match_instances(pred, true)
    # true 1 vs pred 4: 0; true 1 vs pred 9: 2 / 4; true 4 vs pred 4: 1 / 2; true 4 vs pred 9: 0.
    np.testing.assert_allclose(iou, [[0.0, 0.5], [0.5, 0.0]])
    assert match_instances(np.zeros((3, 3), int), np.ones((3, 3), int)).shape == (1, 0)


def test_instance_f1_one_perfect_one_missed() -> None:
    true = np.zeros((20, 20), dtype=np.int32)
    true[2:8, 2:8] = 1
    true[12:18, 12:18] = 2
    pred = np.where(true == 1, 7, 0)
    assert instance_f1(pred, true) == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1: 2 / (2 + 1)
    assert instance_f1(true, true) == 1.0
    assert instance_f1(np.zeros_like(true), np.zeros_like(true)) == 1.0
    assert average_precision(pred, true, iou_threshold=0.5) == pytest.approx(1 / 2)


def test_low_threshold_uses_one_to_one_assignment() -> None:
    true = np.zeros((1, 20), dtype=np.int32)
    true[0, 0:10] = 1
    true[0, 10:20] = 2
    pred = np.zeros_like(true)
    pred[0, 0:3] = 1  # IoU with true 1: 3 / 10 = 0.3
    pred[0, 3:14] = 2  # IoU with true 1: 7 / 14 = 0.5; with true 2: 4 / 17 = 0.235
    # At 0.2 greedy best-IoU matching would pair pred 2 with true 1 and leave one TP; the
    # maximum one-to-one matching pairs pred 1-true 1 and pred 2-true 2: TP 2, F1 1.
    assert instance_f1(pred, true, iou_threshold=0.2) == 1.0
    # At 0.25 the only hits are pred 1 and pred 2 with true 1: TP 1, F1 = 2 / (2 + 1 + 1).
    assert instance_f1(pred, true, iou_threshold=0.25) == 0.5
    # At 0.5 the IoU of exactly 0.5 is not strictly above the threshold: no TP.
    assert instance_f1(pred, true, iou_threshold=0.5) == 0.0


def test_map_of_shifted_square_hand_computed() -> None:
    true = np.zeros((20, 20), dtype=np.int32)
    true[5:15, 5:15] = 1
    pred = np.zeros_like(true)
    pred[5:15, 6:16] = 3
    # Intersection 10 x 9 = 90, union 110: IoU 0.818 > 0.5, ..., 0.8 (7 thresholds), so mAP = 7 / 10.
    assert mean_average_precision(pred, true) == pytest.approx(0.7)
    assert average_precision(pred, true, iou_threshold=0.8) == 1.0
    assert average_precision(pred, true, iou_threshold=0.85) == 0.0


def test_map_of_shifted_disc_follows_its_iou() -> None:
    a = _disc((40, 40), (20, 20), 9)
    b = _disc((40, 40), (20, 22), 9)
    iou = np.count_nonzero(a & b) / np.count_nonzero(a | b)
    expected = sum(iou > t for t in DSB_THRESHOLDS) / len(DSB_THRESHOLDS)
    assert 0.0 < expected < 1.0
    assert mean_average_precision(b.astype(np.int32), a.astype(np.int32)) == pytest.approx(expected)
    assert DSB_THRESHOLDS == tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def test_instance_metrics_bad_input_raises() -> None:
    labels = np.ones((3, 3), dtype=np.int32)
    with pytest.raises(InvalidImageError, match=r"\(3, 3\) and \(3, 4\)"):
        instance_f1(labels, np.ones((3, 4), np.int32))
    with pytest.raises(InvalidImageError, match="non-negative integer"):
        match_instances(labels.astype(float), labels)
    with pytest.raises(InvalidImageError, match="non-negative integer"):
        match_instances(-labels, labels)
    with pytest.raises(InvalidImageError, match=r"\[0, 1\)"):
        average_precision(labels, labels, iou_threshold=1.0)
    with pytest.raises(InvalidImageError, match="at least one"):
        mean_average_precision(labels, labels, thresholds=())


# ---------------------------------------------------------------------------- rank agreement


def test_identical_ranking() -> None:
    true = np.array([0.9, 0.5, 0.7, 0.2])
    s = rank_agreement(true * 0.5 + 0.1, true, rng=0)
    assert (s.spearman, s.kendall, s.pearson) == pytest.approx((1.0, 1.0, 1.0))
    assert s.weighted_tau == pytest.approx(1.0)
    assert s.top1_hit and s.regret == 0.0
    assert s.random_regret == pytest.approx(0.9 - true.mean())
    # 4 models: scipy enumerates all pairings exactly; of the 4! relative orderings only the
    # identity and the reversal are as extreme, so the two-sided p-value is 2 / 24.
    assert s.spearman_p == pytest.approx(2 / 24)
    assert s.kendall_p == pytest.approx(2 / 24)


def test_reversed_ranking() -> None:
    true = np.array([0.9, 0.5, 0.7, 0.2])
    s = rank_agreement(-true, true, rng=1)
    assert (s.spearman, s.kendall, s.pearson) == pytest.approx((-1.0, -1.0, -1.0))
    assert not s.top1_hit
    assert s.regret == pytest.approx(0.9 - 0.2)
    assert 0.0 < s.spearman_p <= 1.0 and 0.0 < s.kendall_p <= 1.0


def test_matches_direct_scipy_calls_on_random_data() -> None:
    rng = np.random.default_rng(42)
    true = rng.random(12)
    est = true + rng.normal(scale=0.3, size=12)
    s = rank_agreement(est, true, n_permutations=500, rng=7)
    assert s.pearson == pytest.approx(stats.pearsonr(est, true).statistic)
    assert s.spearman == pytest.approx(stats.spearmanr(est, true).statistic)
    assert s.kendall == pytest.approx(stats.kendalltau(est, true).statistic)
    assert s.weighted_tau == pytest.approx(stats.weightedtau(est, true).statistic)
    gen = np.random.default_rng(7)
    for name, function in (("spearman_p", stats.spearmanr), ("kendall_p", stats.kendalltau)):
        reference = stats.permutation_test(
            (est, true),
            lambda x, y, f=function: f(x, y).statistic,
            permutation_type="pairings",
            n_resamples=500,
            alternative="two-sided",
            rng=gen,
        )
        assert getattr(s, name) == pytest.approx(reference.pvalue)
        assert 0.0 < getattr(s, name) <= 1.0


def test_nan_estimate_ranks_last() -> None:
    true = np.array([0.1, 0.9, 0.5, 0.3])
    est = np.array([np.nan, 0.8, 0.6, 0.4])
    s = rank_agreement(est, true, rng=0)
    # The model without a score takes the lowest estimate, which is also its true rank.
    assert s.spearman == pytest.approx(1.0) and s.kendall == pytest.approx(1.0)
    assert s.pearson == pytest.approx(stats.pearsonr(est[1:], true[1:]).statistic)
    worst_first = rank_agreement(np.array([0.9, np.nan, 0.6, 0.4]), true, rng=0)
    assert worst_first.spearman == pytest.approx(stats.spearmanr([0.9, 0.0, 0.6, 0.4], true).statistic)
    assert not worst_first.top1_hit and worst_first.regret == pytest.approx(0.8)


def test_constant_estimate_gives_nan_without_warnings() -> None:
    s = rank_agreement(np.full(4, 0.5), np.array([0.1, 0.2, 0.3, 0.4]), rng=0)
    assert math.isnan(s.spearman) and math.isnan(s.kendall) and math.isnan(s.pearson)
    assert math.isnan(s.spearman_p) and math.isnan(s.kendall_p)
    assert s.regret == pytest.approx(0.3)  # ties: the first maximum (model 0) is picked
    all_nan = rank_agreement(np.full(3, np.nan), np.array([1.0, 2.0, 3.0]), rng=0)
    assert math.isnan(all_nan.spearman) and all_nan.regret == 2.0


def test_agreement_stats_json_and_frozen() -> None:
    s = rank_agreement(np.full(3, 0.5), np.array([1.0, 2.0, 3.0]), rng=0)
    s = dataclasses.replace(s, spearman_ci=(0.1, 0.9))
    out = s.to_json_dict()
    assert out["spearman"] is None and out["spearman_ci"] == [0.1, 0.9] and out["kendall_ci"] is None
    json.dumps(out, allow_nan=False)
    assert isinstance(s, AgreementStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.regret = 0.0  # type: ignore[misc]


def test_rank_agreement_bad_input_raises() -> None:
    with pytest.raises(InvalidImageError, match=r"\(3,\) and \(4,\)"):
        rank_agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InvalidImageError, match=r"at least 3 models, got 1"):
        rank_agreement([1.0], [1.0])
    with pytest.raises(InvalidImageError, match=r"\(2, 2\)"):
        rank_agreement(np.ones((2, 2)), [1.0, 2.0])
    with pytest.raises(InvalidImageError, match="true must hold finite"):
        rank_agreement([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="n_permutations"):
        rank_agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_permutations=0)


# ---------------------------------------------------------------------------- bootstrap


def _per_image(rng: np.random.Generator, n_models: int = 12, n_images: int = 30) -> tuple[np.ndarray, ...]:
    true = rng.random(n_models)
    per_image = true[:, None] + rng.normal(scale=0.4, size=(n_models, n_images))
    per_image[rng.random(per_image.shape) < 0.1] = np.nan
    per_image[0] = np.nan  # a model with no valid image at all
    return per_image, true


def test_bootstrap_reproducible_and_contains_point_estimate() -> None:
    per_image, true = _per_image(np.random.default_rng(3))
    first = bootstrap_agreement(per_image, true, rng=11)
    assert first == bootstrap_agreement(per_image, true, rng=np.random.default_rng(11))
    assert first != bootstrap_agreement(per_image, true, rng=12)
    point = rank_agreement(np.r_[np.nan, np.nanmedian(per_image[1:], axis=1)], true, rng=0)
    for (low, high), value in zip(first, (point.spearman, point.kendall), strict=True):
        assert -1.0 <= low <= value <= high <= 1.0


def test_bootstrap_of_identical_images_equals_scipy() -> None:
    # Every column is the same, so every replicate equals the full-data correlation.
    est = np.array([0.3, 0.9, np.nan, 0.5, 0.4])
    true = np.array([0.2, 0.8, 0.6, 0.1, 0.5])
    per_image = np.repeat(est[:, None], 6, axis=1)
    (s_low, s_high), (k_low, k_high) = bootstrap_agreement(per_image, true, aggregate="mean", rng=0)
    filled = np.array([0.3, 0.9, -1.0, 0.5, 0.4])  # the unscored model ranks last
    assert s_low == pytest.approx(stats.spearmanr(filled, true).statistic) == pytest.approx(s_high)
    assert k_low == pytest.approx(stats.kendalltau(filled, true).statistic) == pytest.approx(k_high)


def test_bootstrap_bad_input_raises() -> None:
    per_image = np.ones((4, 5))
    with pytest.raises(InvalidImageError, match=r"\(4, 5\) and \(3,\)"):
        bootstrap_agreement(per_image, np.ones(3))
    with pytest.raises(InvalidImageError, match=r"shape \(4,\)"):
        bootstrap_agreement(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="'mode'"):
        bootstrap_agreement(per_image, np.ones(4), aggregate="mode")  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match="ci"):
        bootstrap_agreement(per_image, np.ones(4), ci=1.5)
    with pytest.raises(InvalidImageError, match="n_boot"):
        bootstrap_agreement(per_image, np.ones(4), n_boot=0)
