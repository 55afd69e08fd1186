"""Every random draw of a run derives from its seed (bioimage_cte.seeds): reproducible, and independent across
run seeds, families, images, repeats and models. Model-free; torch only to draw channel masks as the grey-box
predictor draws them."""

from __future__ import annotations

import numpy as np
import pytest

from bioimage_cte.seeds import draw_seed, rng, seed_sequence

IMAGES, REPEATS, CHANNELS, P = 20, 3, 64, 0.2


def _mask_seeds(run_seed: int, family: str = "feature-dropout") -> list[int]:
    return [draw_seed(run_seed, family, image=i, repeat=r) for i in range(IMAGES) for r in range(REPEATS)]


def _channel_mask(seed: int, channels: int = CHANNELS, p: float = P):
    """The channel mask bioimage_cte.predictors._DropoutAdapter._hook draws for FeatureDropout(p, seed)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.rand(channels, generator=gen) >= p


def test_draws_are_reproducible():
    assert _mask_seeds(0) == _mask_seeds(0)
    assert rng(3, "input-gaussian", image=2, repeat=1).random(5).tolist() == \
        rng(3, "input-gaussian", image=2, repeat=1).random(5).tolist()
    assert seed_sequence(3, "x", image=1).generate_state(4).tolist() == \
        seed_sequence(3, "x", image=1).generate_state(4).tolist()


def test_draw_seed_fits_torch_manual_seed():
    seeds = _mask_seeds(0) + _mask_seeds(12345)
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds)  # every image and repeat of a run gets its own mask


def test_two_run_seeds_share_no_dropout_masks():
    """With an offset derivation (seed + image) seed 1 on image 0 would reuse seed 0's mask of image 1."""
    zero, one = _mask_seeds(0), _mask_seeds(1)
    assert not set(zero) & set(one)
    masks_zero = {tuple(_channel_mask(s).tolist()) for s in zero}
    masks_one = {tuple(_channel_mask(s).tolist()) for s in one}
    assert len(masks_zero) == len(zero) and len(masks_one) == len(one)  # distinct within a run too
    assert not masks_zero & masks_one
    # pairwise, at the same image and repeat, the masks differ
    for a, b in zip(zero, one, strict=True):
        assert not np.array_equal(_channel_mask(a).numpy(), _channel_mask(b).numpy())


def test_the_mask_drops_about_p_of_the_channels():
    kept = np.mean([_channel_mask(s, channels=256).float().mean().item() for s in _mask_seeds(0)])
    assert kept == pytest.approx(1 - P, abs=0.02)


def test_families_images_repeats_and_models_draw_differently():
    base = draw_seed(0, "feature-dropout", image=1, repeat=0)
    others = [
        draw_seed(0, "mc-dropout", image=1, repeat=0),
        draw_seed(0, "input-gaussian", image=1, repeat=0),
        draw_seed(0, "feature-dropout", image=2, repeat=0),
        draw_seed(0, "feature-dropout", image=1, repeat=1),
        draw_seed(0, "feature-dropout", image=1, repeat=0, model="m"),
        draw_seed(1, "feature-dropout", image=0, repeat=0),  # the collision an offset would make
        draw_seed(0, "feature-dropout", image=0, repeat=1),
    ]
    assert len({base, *others}) == len(others) + 1
    assert not set(_mask_seeds(0, "feature-dropout")) & set(_mask_seeds(0, "mc-dropout"))
    images = [rng(0, "input-gaussian", image=i).standard_normal(8) for i in range(IMAGES)]
    assert len({tuple(x) for x in images}) == IMAGES
    assert not np.array_equal(rng(0, "random", model="a").random(3), rng(0, "random", model="b").random(3))


def test_known_values_are_stable_across_processes():
    """crc32 names, not hash(): the same run seed draws the same masks in any process and Python version."""
    # pinned: a change here changes every score in every results database (their keys would not notice)
    assert draw_seed(7, "feature-dropout", image=3, repeat=2) == 7017721999082020142
    assert draw_seed(0, "feature-dropout") == 6072900856197120423
    sequence = seed_sequence(7, "feature-dropout", image=3, repeat=2)
    assert sequence.entropy == 7 and len(sequence.spawn_key) == 4
    expected = np.random.SeedSequence(7, spawn_key=sequence.spawn_key).generate_state(2, np.uint32)
    assert int(expected[0]) << 31 | int(expected[1]) >> 1 == draw_seed(7, "feature-dropout", image=3, repeat=2)
    import zlib

    assert sequence.spawn_key[0] == zlib.crc32(b"feature-dropout") and sequence.spawn_key[2:] == (3, 2)


@pytest.mark.parametrize("bad", [{"run_seed": -1}, {"image": -1}, {"repeat": -2}])
def test_negative_parts_are_refused(bad):
    args = {"run_seed": 0, "image": 0, "repeat": 0, **bad}
    with pytest.raises(ValueError, match="non-negative"):
        seed_sequence(args.pop("run_seed"), "feature-dropout", **args)
