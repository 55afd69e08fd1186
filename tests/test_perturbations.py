"""Input perturbations, flips/rotations and the dropout description (model-free)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bioimage_cte.cte.perturbations import (
    DEFAULT_DROPOUT,
    DEFAULT_INPUT_STRENGTH,
    INPUT_KINDS,
    InputPerturbation,
    dihedral,
    dynamic_range,
    perturb_image,
    undo_dihedral,
)
from bioimage_cte.cte.seeds import rng
from bioimage_cte.predict.dropout import FeatureDropout


def _ramp(dtype=np.float32, high: float = 100.0) -> np.ndarray:
    return np.linspace(0, high, 40 * 50).reshape(40, 50).astype(dtype)


def test_defaults():
    assert DEFAULT_DROPOUT == 0.2 and DEFAULT_INPUT_STRENGTH == 0.1
    assert InputPerturbation() == InputPerturbation("gaussian", 0.1)
    assert INPUT_KINDS == ("gaussian", "brightness", "contrast", "gamma")


def test_dynamic_range_uses_percentiles_and_survives_constant_images():
    x = _ramp()
    lo, hi = dynamic_range(x)
    assert lo == pytest.approx(np.percentile(x, 1)) and hi == pytest.approx(np.percentile(x, 99.8))
    assert dynamic_range(np.full((4, 4), 7.0)) == (7.0, 8.0)


def test_gaussian_noise_is_relative_to_the_range_and_reproducible_from_the_generator():
    x = _ramp()
    lo, hi = dynamic_range(x)
    a = perturb_image(x, InputPerturbation("gaussian", 0.1), rng=rng(0, "input-gaussian", image=1))
    b = perturb_image(x, InputPerturbation("gaussian", 0.1), rng=rng(0, "input-gaussian", image=1))
    c = perturb_image(x, InputPerturbation("gaussian", 0.1), rng=rng(0, "input-gaussian", image=2))
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.std(a - x) == pytest.approx(0.1 * (hi - lo), rel=0.05)
    assert abs(np.mean(a - x)) < 0.01 * (hi - lo)
    np.testing.assert_array_equal(perturb_image(x, InputPerturbation("gaussian", 0.1), rng=5),
                                  perturb_image(x, InputPerturbation("gaussian", 0.1), rng=5))
    assert np.allclose(perturb_image(x, InputPerturbation("gaussian", 0.0), rng=0), x, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_same_strength_means_the_same_for_any_intensity_units(dtype):
    high = {np.uint8: 255, np.uint16: 60000, np.float32: 1.0}[dtype]
    x = _ramp(dtype, high)
    lo, hi = dynamic_range(x)
    y = perturb_image(x, InputPerturbation("gaussian", 0.1), rng=0)
    assert np.std(y - x.astype(np.float32)) / (hi - lo) == pytest.approx(0.1, rel=0.05)


def test_brightness_contrast_and_gamma():
    x = _ramp()
    lo, hi = dynamic_range(x)
    shifted = perturb_image(x, InputPerturbation("brightness", 0.1))
    np.testing.assert_allclose(shifted - x, 0.1 * (hi - lo), rtol=1e-4)
    stretched = perturb_image(x, InputPerturbation("contrast", 0.5))
    np.testing.assert_allclose(stretched - stretched.mean(), 1.5 * (x - x.mean()), atol=1e-3)
    gamma = perturb_image(x, InputPerturbation("gamma", 1.0))
    unit = (x - lo) / (hi - lo)
    np.testing.assert_allclose(gamma, (np.sign(unit) * np.abs(unit) ** 2) * (hi - lo) + lo, rtol=1e-4, atol=1e-3)
    # brightness, contrast and gamma draw nothing: the generator does not matter
    for kind in ("brightness", "contrast", "gamma"):
        np.testing.assert_array_equal(perturb_image(x, InputPerturbation(kind, 0.2), rng=1),
                                      perturb_image(x, InputPerturbation(kind, 0.2), rng=2))


def test_stacks_are_perturbed_as_a_whole():
    stack = np.stack([_ramp(), _ramp() * 2])
    out = perturb_image(stack, InputPerturbation("gaussian", 0.1), rng=0)
    assert out.shape == stack.shape and not np.array_equal(out[0], out[1] / 2)


@pytest.mark.parametrize(("kind", "strength", "message"), [
    ("blur", 0.1, "unknown input perturbation 'blur'"),
    ("gaussian", -0.1, "invalid"),
    ("gaussian", float("nan"), "invalid"),
    ("brightness", float("inf"), "invalid"),
    ("contrast", -1.0, "must be > -1"),
    ("gamma", -1.5, "must be > -1"),
])
def test_input_perturbation_validation(kind, strength, message):
    with pytest.raises(ValueError, match=message):
        InputPerturbation(kind, strength)  # type: ignore[arg-type]


def test_negative_brightness_and_contrast_are_allowed():
    assert InputPerturbation("brightness", -0.2).strength == -0.2
    assert InputPerturbation("contrast", -0.5).strength == -0.5


@pytest.mark.parametrize("k", range(8))
def test_undo_dihedral_inverts_each_of_the_eight(k):
    image = np.arange(3 * 5 * 7).reshape(3, 5, 7)  # a stack: only the last two axes move
    out = dihedral(image, k)
    np.testing.assert_array_equal(undo_dihedral(out, k), image)
    assert out.shape[0] == 3
    assert out.shape[1:] == ((5, 7) if k % 2 == 0 else (7, 5))


def test_the_eight_dihedral_transforms_are_distinct_and_zero_is_the_identity():
    image = np.arange(16).reshape(4, 4)
    outs = {dihedral(image, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(dihedral(image, 0), image)
    np.testing.assert_array_equal(dihedral(image, 4), image[:, ::-1])
    np.testing.assert_array_equal(dihedral(image, 1), np.rot90(image))


def test_feature_dropout_validation():
    assert FeatureDropout(0.0, seed=1).p == 0.0
    assert FeatureDropout(0.99, seed=1).seed == 1
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="0 <= p < 1"):
            FeatureDropout(p, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FeatureDropout(0.2, seed=0).p = 0.3  # type: ignore[misc]
