"""Known-answer tests of bioimage_cte.predict.segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.predict.segmentation import (
    Prediction,
    binarize,
    instances,
    label_foreground,
    watershed_from_boundaries,
)


def _two_touching_discs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two discs of radius 6 centred 10 px apart, so they overlap in a lens around column 15."""
    yy, xx = np.mgrid[:21, :31]
    left = (yy - 10) ** 2 + (xx - 10) ** 2 <= 36
    right = (yy - 10) ** 2 + (xx - 20) ** 2 <= 36
    foreground = (left | right).astype(np.float64)
    boundary = np.zeros_like(foreground)
    boundary[:, 14:17] = 1.0  # the contact region, three columns wide
    return foreground, boundary, left & ~right


def test_binarize_is_strictly_above_threshold() -> None:
    prob = np.array([[0.0, 0.5], [0.50001, 1.0]])
    np.testing.assert_array_equal(binarize(prob), [[False, False], [True, True]])
    np.testing.assert_array_equal(binarize(prob, threshold=0.0), [[False, True], [True, True]])
    assert binarize(prob).dtype == np.bool_


def test_label_foreground_uses_4_connectivity_and_sieves() -> None:
    prob = np.array(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0],
        ],
        dtype=float,
    )
    labels = label_foreground(prob)
    # The two diagonal pixels are separate objects under 4-connectivity.
    assert labels.dtype == np.int32
    assert labels.max() == 4
    assert labels[0, 0] != labels[1, 1]
    sieved = label_foreground(prob, min_size=2)
    expected = np.zeros_like(sieved)
    expected[0:2, 4] = 1
    expected[3, 0:3] = 2
    np.testing.assert_array_equal(sieved, expected)
    assert label_foreground(prob, min_size=4).max() == 0


def test_watershed_separates_two_touching_discs() -> None:
    foreground, boundary, left_only = _two_touching_discs()
    assert label_foreground(foreground).max() == 1  # thresholding alone merges them
    labels = watershed_from_boundaries(foreground, boundary)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels > 0, foreground > 0.5)
    assert len(np.unique(labels[left_only & (boundary < 0.5)])) == 1
    assert labels[10, 5] != labels[10, 25]


def test_watershed_min_size_and_no_seed() -> None:
    foreground, boundary, _ = _two_touching_discs()
    foreground[0, 0] = 1.0  # an isolated one-pixel object
    assert watershed_from_boundaries(foreground, boundary).max() == 3
    assert watershed_from_boundaries(foreground, boundary, min_size=10).max() == 2
    all_boundary = np.ones_like(boundary)
    assert not watershed_from_boundaries(foreground, all_boundary).any()


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3, 4)])
def test_non_2d_or_3d_input_raises_with_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidImageError, match=r"2D.*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
        label_foreground(np.zeros(shape))
    with pytest.raises(InvalidImageError, match="2D .* or 3D"):
        binarize(np.zeros(shape))


def test_bad_parameters_raise() -> None:
    with pytest.raises(InvalidImageError, match=r"\(4, 4\) and \(4, 5\)"):
        watershed_from_boundaries(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InvalidImageError, match="min_size"):
        label_foreground(np.zeros((3, 3)), min_size=-1)
    with pytest.raises(InvalidImageError, match="threshold"):
        binarize(np.zeros((3, 3)), threshold=float("nan"))
    with pytest.raises(InvalidImageError, match="NaN"):
        binarize(np.full((3, 3), np.nan))


def test_instances_use_the_boundary_channel_when_there_is_one() -> None:
    foreground, boundary, _ = _two_touching_discs()
    assert instances(Prediction(foreground)).max() == 1
    assert instances(Prediction(foreground, boundary)).max() == 2
    np.testing.assert_array_equal(instances(Prediction(foreground, boundary)),
                                  watershed_from_boundaries(foreground, boundary, min_size=16))
    small = np.zeros((10, 10))
    small[1:3, 1:3] = small[6:9, 6:9] = 1.0  # 4 and 9 pixels
    assert instances(Prediction(small)).max() == 0  # below the default min_size of 16
    assert instances(Prediction(small), min_size=5).max() == 1
    assert instances(Prediction(small * 0.6), threshold=0.7, min_size=1).max() == 0
