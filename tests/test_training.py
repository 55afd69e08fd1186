"""The demo zoo's training recipe and the recipe zoo's departures from it (geometric augmentation, loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioimage_cte.demozoo.training import _batch, _loss


def _pool() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((3, 40, 40)).astype(np.float32)
    return x, (x > 0.5).astype(np.float32)[:, None]


def _is_crop(patch: np.ndarray, pool: np.ndarray) -> bool:
    side = patch.shape[-1]
    return any(np.array_equal(image[y:y + side, x:x + side], patch)
               for image in pool for y in range(image.shape[0] - side + 1) for x in range(image.shape[1] - side + 1))


def test_without_geometric_augmentation_every_patch_is_a_plain_crop_and_with_it_most_are_not():
    pool_x, pool_y = _pool()
    plain, _ = _batch(pool_x, pool_y, batch_size=12, patch=16, augment=False, rng=np.random.default_rng(1),
                      geometric=False)
    assert all(_is_crop(p[0], pool_x) for p in plain)
    turned, _ = _batch(pool_x, pool_y, batch_size=12, patch=16, augment=False, rng=np.random.default_rng(1))
    assert sum(not _is_crop(p[0], pool_x) for p in turned) >= 6  # 7 of 8 dihedral elements move a random patch


def test_the_default_recipe_draws_the_same_batches_as_before_the_recipe_options_existed():
    # the shipped demo models were trained with these draws: the digest is the batch the code drew before
    # `geometric` and `loss` were added, so the options must not shift the random stream
    import hashlib

    pool_x, pool_y = _pool()
    x, y = _batch(pool_x, pool_y, batch_size=4, patch=16, augment=True, rng=np.random.default_rng(3))
    assert hashlib.sha256(np.round(x, 4).tobytes() + y.tobytes()).hexdigest()[:16] == "fd95295304aebfd2"


@pytest.mark.parametrize("kind", ["bce+dice", "bce", "dice"])
def test_each_loss_is_low_for_the_right_answer_and_high_for_the_opposite(kind):
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    right, wrong = _loss(20 * (2 * target - 1), target, kind), _loss(-20 * (2 * target - 1), target, kind)
    assert float(right) < 0.05 < 0.9 < float(wrong)


def test_bce_plus_dice_is_the_sum_of_its_parts():
    target = (torch.arange(64).reshape(1, 1, 8, 8) % 3 == 0).float()
    logits = torch.linspace(-2, 2, 64).reshape(1, 1, 8, 8)
    assert float(_loss(logits, target)) == pytest.approx(float(_loss(logits, target, "bce") + _loss(logits, target,
                                                                                                      "dice")))
