"""Known-answer tests of bioimage_cte.cte.consistency."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.cte.consistency import (
    CONSISTENCY_FUNCTIONS,
    Aggregate,
    aggregate,
    bootstrap_intervals,
    hard_consistency,
    instance_consistency,
    soft_consistency,
)


def _square_labels() -> np.ndarray:
    labels = np.zeros((12, 12), dtype=np.int32)
    labels[1:5, 1:5] = 1
    labels[1:5, 7:11] = 2
    labels[7:11, 2:10] = 3
    return labels


# ---------------------------------------------------------------------------- hard


def test_hard_identical_is_one_and_disjoint_is_zero() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((16, 16))
    assert hard_consistency(prob, prob) == 1.0
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[:2] = 0.9
    b[2:] = 0.9
    assert hard_consistency(a, b) == 0.0


def test_hard_partial_overlap_is_iou() -> None:
    # A = pixels {0, 1}, B = pixels {1, 2}: |A & B| = 1, |A | B| = 3, IoU = 1/3.
    clean = np.array([[0.9, 0.8, 0.2, 0.0]])
    perturbed = np.array([[0.1, 0.7, 0.6, 0.0]])
    assert hard_consistency(clean, perturbed) == pytest.approx(1 / 3)
    # At threshold 0.65 only pixel 1 of B remains: A = {0, 1}, B = {1}, IoU = 1/2.
    assert hard_consistency(clean, perturbed, threshold=0.65) == pytest.approx(1 / 2)


def test_empty_union_is_nan_and_counted_by_aggregate() -> None:
    empty = np.zeros((5, 5))
    assert math.isnan(hard_consistency(empty, empty))
    assert math.isnan(soft_consistency(empty, empty))
    result = aggregate([hard_consistency(empty, empty), 1.0, 0.5])
    assert result == Aggregate(score=0.75, n_images=3, n_valid=2, n_empty=1, mean=0.75, std=0.25)


# ---------------------------------------------------------------------------- soft


def test_soft_identical_confident_maps_are_close_to_one() -> None:
    prob = np.array([[0.99, 0.98], [0.01, 0.995]])
    # Union = the three foreground pixels, EI = p there: (0.99 + 0.98 + 0.995) / 3.
    assert soft_consistency(prob, prob) == pytest.approx((0.99 + 0.98 + 0.995) / 3)
    assert soft_consistency(prob, prob) > 0.98


def test_soft_uncertain_maps_hand_computed() -> None:
    clean = np.array([0.9, 0.9, 0.2, 0.1])
    perturbed = np.array([0.9, 0.6, 0.7, 0.1])
    # Union = pixels 0, 1, 2. Pixel 0: sqrt(0.9 * 0.9) = 0.9; pixel 1: sqrt(0.9 * 0.6);
    # pixel 2: classes differ -> 0. Mean = (0.9 + sqrt(0.54)) / 3 = 0.544948...
    expected = (0.9 + math.sqrt(0.54)) / 3
    assert soft_consistency(clean, perturbed) == pytest.approx(expected)
    assert soft_consistency(clean, perturbed) < soft_consistency(clean, clean)


def test_soft_ignores_agreeing_background() -> None:
    # Pixel 1 is background in both maps, so it is outside the union and its confident
    # agreement is not counted; only pixel 0 is: sqrt(0.6 * 0.8).
    clean = np.array([0.6, 0.3])
    perturbed = np.array([0.8, 0.4])
    assert soft_consistency(clean, perturbed) == pytest.approx(math.sqrt(0.48))


def test_soft_rejects_values_outside_unit_interval() -> None:
    with pytest.raises(InvalidImageError, match=r"\[0, 1\].*sigmoid"):
        soft_consistency(np.array([1.5, 0.0]), np.array([0.5, 0.0]))


# ---------------------------------------------------------------------------- instance


def test_instance_identical_and_permuted_labels_are_one() -> None:
    labels = _square_labels()
    assert instance_consistency(labels, labels) == pytest.approx(1.0)
    permuted = np.array([0, 3, 1, 2])[labels]
    assert instance_consistency(labels, permuted) == pytest.approx(1.0)
    assert instance_consistency(labels, permuted + 10 * (permuted > 0)) == pytest.approx(1.0)


def test_instance_hand_computed_adapted_rand() -> None:
    clean = np.array([[1, 1, 1, 1, 2, 2]])
    perturbed = np.array([[4, 4, 4, 4, 4, 4]])
    # border_width=0: the mask is all 6 pixels. Pixel pairs in the same segment:
    # clean C(4,2) + C(2,2) = 6 + 1 = 7; perturbed C(6,2) = 15; in both 7.
    # Adapted Rand F-score = 2 * 7 / (7 + 15) = 7 / 11.
    assert instance_consistency(clean, perturbed, border_width=0) == pytest.approx(7 / 11)


def test_instance_background_pixels_are_singletons() -> None:
    clean = np.array([[1, 1, 1, 0]])
    perturbed = np.array([[1, 1, 1, 1]])
    # Mask = 4 pixels; the clean background pixel is its own segment. Pairs: clean C(3,2) = 3,
    # perturbed C(4,2) = 6, both 3. F = 2 * 3 / (3 + 6) = 2/3.
    assert instance_consistency(clean, perturbed, border_width=0) == pytest.approx(2 / 3)


def test_instance_split_object_is_below_one() -> None:
    clean = np.zeros((10, 20), dtype=np.int32)
    clean[2:8, 2:18] = 1
    split = clean.copy()
    split[2:8, 10:18] = 2
    score = instance_consistency(clean, split)
    assert 0.0 < score < 1.0
    # Interior after the 1-px band is rows 3..6, cols 3..16: 4 x 14 = 56 pixels, split 4x7 | 4x7.
    # Pairs: clean C(56,2) = 1540, split 2 * C(28,2) = 756, both 756 -> F = 1512 / 2296.
    assert score == pytest.approx(1512 / 2296)


def test_instance_border_band_covers_touching_instances() -> None:
    clean = np.zeros((6, 12), dtype=np.int32)
    clean[1:5, 1:6] = 1
    clean[1:5, 6:11] = 2
    # Moving the contact line by one pixel only touches the ignored band around it.
    moved = clean.copy()
    moved[1:5, 6] = 1
    assert instance_consistency(clean, moved, border_width=1) == pytest.approx(1.0)
    assert instance_consistency(clean, moved, border_width=0) < 1.0


def test_instance_empty_mask_is_nan_and_singletons_only_is_one() -> None:
    empty = np.zeros((5, 5), dtype=np.int32)
    assert math.isnan(instance_consistency(empty, empty))
    dot = empty.copy()
    dot[2, 2] = 1
    assert math.isnan(instance_consistency(dot, dot, border_width=1))  # all of it is border
    # Without the band the mask is one pixel, so there are no pixel pairs to disagree on.
    assert instance_consistency(dot, dot, border_width=0) == 1.0


def test_instance_bad_input_raises() -> None:
    with pytest.raises(InvalidImageError, match=r"\(3, 3\) and \(3, 4\)"):
        instance_consistency(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(InvalidImageError, match="integer label image"):
        instance_consistency(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(InvalidImageError, match="border_width"):
        instance_consistency(np.zeros((3, 3), int), np.zeros((3, 3), int), border_width=-1)


# ---------------------------------------------------------------------------- aggregate and registry


def test_aggregate_median_mean_and_all_empty() -> None:
    values = [0.2, 0.4, 0.9, float("nan")]
    assert aggregate(values).score == pytest.approx(0.4)
    result = aggregate(values, how="mean")
    assert result.score == pytest.approx(0.5)
    assert (result.n_images, result.n_valid, result.n_empty) == (4, 3, 1)
    nothing = aggregate([float("nan")] * 3)
    assert math.isnan(nothing.score) and nothing.n_empty == 3 and nothing.n_valid == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        nothing.score = 1.0  # type: ignore[misc]


def test_aggregate_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="'mode'"):
        aggregate([1.0], how="mode")  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match=r"\(0,\)"):
        aggregate([])


def test_registry_and_shape_mismatch() -> None:
    assert set(CONSISTENCY_FUNCTIONS) == {"hard", "soft"}
    for name, function in CONSISTENCY_FUNCTIONS.items():
        with pytest.raises(InvalidImageError, match=r"\(2, 3\) and \(3, 2\)"):
            function(np.zeros((2, 3)), np.zeros((3, 2)))
        with pytest.raises(InvalidImageError, match="threshold"):
            function(np.zeros(3), np.zeros(3), threshold=2.0)
        assert function(np.ones(3), np.ones(3)) == 1.0, name


# ---------------------------------------------------------------------------- bootstrap intervals


def test_bootstrap_intervals_contain_the_median_and_skip_empty_images():
    scores = [[0.1, 0.5, 0.9, None], [0.7, 0.7], [None]]
    ci = bootstrap_intervals(scores, seed=1)
    assert ci[0, 0] <= 0.5 <= ci[0, 1] and 0.1 <= ci[0, 0] and ci[0, 1] <= 0.9
    assert ci[1].tolist() == [0.7, 0.7] and np.isnan(ci[2]).all()
    assert np.array_equal(ci, bootstrap_intervals(scores, seed=1), equal_nan=True)
    seq = np.random.SeedSequence(1, spawn_key=(7,))
    assert np.array_equal(bootstrap_intervals(scores, seed=seq), bootstrap_intervals(scores, seed=seq),
                          equal_nan=True)
