"""Consistency over voxels (3D models) and of multi-class (softmax) predictions, on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.cte.consistency import (
    hard_consistency,
    hard_consistency_multiclass,
    instance_consistency,
    soft_consistency,
    soft_consistency_multiclass,
)
from bioimage_cte.cte.estimators import _per_slice, consistency_of
from bioimage_cte.predict.segmentation import Prediction, instances, label_foreground


def _cube(shape: tuple[int, int, int], corner: tuple[int, int, int], side: int, value: float = 1.0) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    z, y, x = corner
    out[z : z + side, y : y + side, x : x + side] = value
    return out


def test_hard_consistency_of_two_shifted_cubes_is_their_voxel_iou() -> None:
    clean = _cube((8, 8, 8), (1, 1, 1), 4)            # 64 voxels
    perturbed = _cube((8, 8, 8), (2, 1, 1), 4)        # shifted one plane: 48 shared, 80 in the union
    assert hard_consistency(clean, perturbed) == pytest.approx(48 / 80)


def test_soft_consistency_over_voxels() -> None:
    clean = _cube((4, 4, 4), (0, 0, 0), 2, 0.9)       # 8 voxels at 0.9
    perturbed = clean.copy()
    perturbed[0, 0, 0] = 0.4                          # one voxel flips to background: EI 0 there
    # the other 7 keep EI = 0.9; mean over the 8 union voxels
    assert soft_consistency(clean, perturbed) == pytest.approx(7 * 0.9 / 8)


def test_3d_labelling_joins_objects_through_planes() -> None:
    volume = np.zeros((2, 5, 5), np.float32)
    volume[0, 1, 0:2] = volume[0, 1, 3:5] = 1.0       # two blobs in plane 0 ...
    volume[1, 1, :] = 1.0                             # ... joined by a bar in plane 1
    assert label_foreground(volume).max() == 1
    assert label_foreground(volume[0]).max() == 2


def test_3d_labelling_is_face_connected() -> None:
    volume = np.zeros((2, 2, 2), np.float32)
    volume[0, 0, 0] = volume[1, 1, 1] = 1.0           # touch only at a corner
    volume2 = np.zeros((2, 2, 2), np.float32)
    volume2[0, 0, 0] = volume2[1, 0, 1] = 1.0         # touch only along an edge
    assert label_foreground(volume).max() == 2
    assert label_foreground(volume2).max() == 2


def test_watershed_instances_in_3d() -> None:
    foreground = np.zeros((6, 6, 12), np.float32)
    foreground[1:5, 1:5, 1:11] = 1.0                  # one block ...
    boundary = np.zeros_like(foreground)
    boundary[:, :, 5:7] = 1.0                         # ... cut in two by a boundary wall
    labels = instances(Prediction(foreground, boundary, volumetric=True), min_size=1)
    assert labels.max() == 2
    assert labels[2, 2, 2] != labels[2, 2, 9]


def test_instance_consistency_of_a_merge_in_3d() -> None:
    clean = np.zeros((4, 4, 9), np.int32)
    clean[0:3, 0:3, 0:3] = 1
    clean[0:3, 0:3, 6:9] = 2                          # two 27-voxel cubes
    merged = (clean > 0).astype(np.int32)             # the perturbed run calls them one object
    n = 27
    # adapted Rand on the union: precision (n - 1) / (2n - 1), recall 1
    assert instance_consistency(clean, merged, border_width=0) == pytest.approx(2 * (n - 1) / (3 * n - 2))
    assert instance_consistency(clean, 3 - clean * (clean > 0) - 3 * (clean == 0), border_width=0) == 1.0


def _three_classes() -> tuple[np.ndarray, np.ndarray]:
    # 6 pixels; argmax classes clean 0 0 1 1 2 2, perturbed 0 1 1 2 2 0
    clean = np.array([[0.7, 0.6, 0.2, 0.1, 0.1, 0.2],
                      [0.2, 0.3, 0.7, 0.8, 0.1, 0.2],
                      [0.1, 0.1, 0.1, 0.1, 0.8, 0.6]])
    perturbed = np.array([[0.8, 0.3, 0.1, 0.2, 0.0, 0.5],
                          [0.1, 0.6, 0.9, 0.2, 0.1, 0.3],
                          [0.1, 0.1, 0.0, 0.6, 0.9, 0.2]])
    return clean, perturbed


def test_multiclass_hard_consistency_known_case() -> None:
    clean, perturbed = _three_classes()
    # union foreground: pixels 1..5 (pixel 0 is background in both); agree on pixels 2 and 4
    assert hard_consistency_multiclass(clean, perturbed) == pytest.approx(2 / 5)
    # without a background class every pixel counts: agree on pixels 0, 2, 4
    assert hard_consistency_multiclass(clean, perturbed, background=None) == pytest.approx(3 / 6)


def test_multiclass_soft_consistency_known_case() -> None:
    clean, perturbed = _three_classes()
    expected = (np.sqrt(0.7 * 0.9) + np.sqrt(0.8 * 0.9)) / 5
    assert soft_consistency_multiclass(clean, perturbed) == pytest.approx(expected)
    assert soft_consistency_multiclass(clean, clean) < 1.0  # unsure clean pixels are not fully consistent
    certain = np.eye(3)[:, [0, 1, 2, 2]]
    assert soft_consistency_multiclass(certain, certain) == 1.0


@pytest.mark.parametrize("shape", [(40,), (6, 7), (3, 4, 5)])
def test_two_class_forms_equal_the_binary_ones(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    p, q = rng.random(shape), rng.random(shape)
    two = lambda x: np.stack([1 - x, x])  # noqa: E731
    assert hard_consistency_multiclass(two(p), two(q)) == pytest.approx(hard_consistency(p, q))
    assert soft_consistency_multiclass(two(p), two(q)) == pytest.approx(soft_consistency(p, q))


def test_multiclass_without_foreground_is_nan() -> None:
    background = np.stack([np.ones((4, 4)), np.zeros((4, 4))])
    assert np.isnan(hard_consistency_multiclass(background, background))
    assert np.isnan(soft_consistency_multiclass(background, background))


def test_multiclass_bad_input_raises() -> None:
    with pytest.raises(InvalidImageError, match="at least 2 classes"):
        hard_consistency_multiclass(np.ones((1, 4, 4)), np.ones((1, 4, 4)))
    with pytest.raises(InvalidImageError, match="same shape"):
        soft_consistency_multiclass(np.ones((3, 4, 4)) / 3, np.ones((2, 4, 4)) / 2)
    with pytest.raises(InvalidImageError, match="background"):
        hard_consistency_multiclass(np.ones((3, 4)) / 3, np.ones((3, 4)) / 3, background=3)
    with pytest.raises(InvalidImageError, match="probabilities"):
        soft_consistency_multiclass(np.full((3, 4), 2.0), np.ones((3, 4)) / 3)


def test_estimator_scoring_uses_class_probabilities_when_given() -> None:
    clean, perturbed = _three_classes()
    a = Prediction((1 - clean[0]).astype(np.float32), classes=clean)
    b = Prediction((1 - perturbed[0]).astype(np.float32), classes=perturbed)
    assert consistency_of(a, b, "hard") == pytest.approx(2 / 5)
    # the foreground alone (1 - background) agrees on pixels 2, 3, 4 of 1..5, though pixel 3 changed class
    assert hard_consistency(a.foreground, b.foreground) == pytest.approx(3 / 5)


def test_a_volume_is_scored_over_voxels_and_a_stack_slice_by_slice() -> None:
    clean = np.zeros((2, 10, 10), np.float32)
    clean[0, :, :] = 1.0                              # plane 0: 100 voxels, kept
    clean[1, 0, 0:4] = 1.0                            # plane 1: 4 voxels, lost
    perturbed = clean.copy()
    perturbed[1] = 0.0
    volume = _per_slice(Prediction(clean, volumetric=True), Prediction(perturbed, volumetric=True), "hard", 0.5)
    stack = _per_slice(Prediction(clean), Prediction(perturbed), "hard", 0.5)
    assert volume == pytest.approx(100 / 104)
    assert stack == pytest.approx((1.0 + 0.0) / 2)
