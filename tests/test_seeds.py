"""Every random draw of a run derives from its seed (bioimage_cte.cte.seeds): reproducible, and independent across
run seeds, families, images, repeats and models. Model-free but for the last test, which runs a demo package
grey-box and checks that the dropout hook zeroes exactly the channels of FeatureDropout.channel_mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.cte.seeds import draw_seed, rng, seed_sequence
from bioimage_cte.predict.dropout import FeatureDropout

ROOT = Path(__file__).resolve().parents[1]
IMAGES, REPEATS, CHANNELS, P = 20, 3, 64, 0.2


def _mask_seeds(run_seed: int, family: str = "feature-dropout") -> list[int]:
    return [draw_seed(run_seed, family, image=i, repeat=r) for i in range(IMAGES) for r in range(REPEATS)]


def _kept(seed: int, channels: int = CHANNELS, p: float = P) -> np.ndarray:
    """The channels the grey-box predictors keep for this seed (FeatureDropout.channel_mask, the library's draw)."""
    return FeatureDropout(p, seed).channel_mask(channels) > 0


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
    masks_zero = {tuple(_kept(s).tolist()) for s in zero}
    masks_one = {tuple(_kept(s).tolist()) for s in one}
    assert len(masks_zero) == len(zero) and len(masks_one) == len(one)  # distinct within a run too
    assert not masks_zero & masks_one
    # pairwise, at the same image and repeat, the masks differ
    for a, b in zip(zero, one, strict=True):
        assert not np.array_equal(_kept(a), _kept(b))


def test_the_mask_drops_about_p_of_the_channels():
    kept = np.mean([_kept(s, channels=256).mean() for s in _mask_seeds(0)])
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


@pytest.mark.slow
def test_the_greybox_hook_zeroes_the_channels_of_the_seeds_mask():
    """A demo package grey-box: at the perturbed layer, the channels zeroed for a seed are those whose
    FeatureDropout(p, seed).channel_mask is 0, and the others are the clean output scaled by 1/(1-p)."""
    import tifffile
    import torch

    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    package = ROOT / "resources" / "zoo" / "nuclei-small-bright.zip"
    image = tifffile.imread(sorted((ROOT / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))[0])
    image = image[:96, :96].astype(np.float32)
    seeds = [draw_seed(0, "feature-dropout", image=0, repeat=r) for r in range(4)]
    with make_predictor(load_model(str(package)), name=str(package), greybox=True) as predictor:
        with predictor.perturbed(FeatureDropout(P, seeds[0])):
            predictor.predict(image)  # the layer is traced and the dropout hook attached on first use
        assert predictor.layer == "bottleneck"
        layer = dict(predictor.adapter._net.named_modules())[predictor.layer]
        seen: list[torch.Tensor] = []
        # registered after the dropout hook, so it sees the layer's output as the network goes on with it
        capture = layer.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
        try:
            predictor.predict(image)
            (clean,) = seen
            live = clean.abs().amax(dim=(0, *range(2, clean.ndim))) > 0  # channels not zero without dropout
            masks = []
            for seed in seeds:
                seen.clear()
                with predictor.perturbed(FeatureDropout(P, seed)):
                    predictor.predict(image)
                (perturbed,) = seen
                mask = FeatureDropout(P, seed).channel_mask(clean.shape[1])
                zeroed = perturbed.abs().amax(dim=(0, *range(2, perturbed.ndim))) == 0
                assert torch.equal(zeroed[live], torch.from_numpy(mask == 0)[live]), seed
                shape = (1, -1, *[1] * (clean.ndim - 2))
                torch.testing.assert_close(perturbed, clean * torch.from_numpy(mask).view(shape))
                masks.append(tuple(mask.tolist()))
        finally:
            capture.remove()
    assert live.sum() >= 8 and len(set(masks)) == len(seeds)  # enough channels, and each seed its own mask
    assert all(0 < m.count(0.0) < len(m) for m in masks)  # each seed drops some channels, not all
