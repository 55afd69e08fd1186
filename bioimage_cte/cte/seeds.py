"""Every random draw of a run, derived in one place from the run's seed.

A draw is named by the run seed and by what it is for: the perturbation family (``"feature-dropout"``,
``"input-gaussian"``, ``"mc-dropout"``, ...), the image, the repeat and, where the draw belongs to one model, the
model. :func:`seed_sequence` hashes all of them together with :class:`numpy.random.SeedSequence`, so two run
seeds give independent draws on every image (an offset such as ``seed + image`` would make seed 1 on image 0 draw
what seed 0 draws on image 1).

Perturbations leave the model out on purpose: every model sees the same noise on the same image (common random
numbers), so the differences between their scores come from the models and not from the draws.

Examples
--------
>>> a = draw_seed(0, "feature-dropout", image=1)
>>> a == draw_seed(0, "feature-dropout", image=1), a == draw_seed(1, "feature-dropout", image=0)
(True, False)
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["draw_seed", "rng", "seed_sequence"]


def _word(text: str) -> int:
    # crc32 is stable across processes and Python versions, unlike hash()
    return zlib.crc32(text.encode("utf-8"))


def seed_sequence(
    run_seed: int, family: str, *, image: int = 0, repeat: int = 0, model: str = ""
) -> np.random.SeedSequence:
    """The seed sequence of one draw.

    Parameters
    ----------
    run_seed : int
        The run's seed (``--seed``), a non-negative integer.
    family : str
        What the draw is for, e.g. ``"feature-dropout"``; different families never share draws.
    image, repeat : int
        Index of the image in the run and of the perturbed pass on that image.
    model : str
        The model's name, for draws that belong to one model (e.g. the ``random`` baseline's score).

    Returns
    -------
    numpy.random.SeedSequence
    """
    if run_seed < 0 or image < 0 or repeat < 0:
        raise ValueError(f"seed {run_seed}, image {image} and repeat {repeat} must be non-negative integers")
    return np.random.SeedSequence(int(run_seed), spawn_key=(_word(family), _word(model), int(image), int(repeat)))


def rng(run_seed: int, family: str, *, image: int = 0, repeat: int = 0, model: str = "") -> np.random.Generator:
    """A numpy generator for one draw (see :func:`seed_sequence`)."""
    return np.random.default_rng(seed_sequence(run_seed, family, image=image, repeat=repeat, model=model))


def draw_seed(run_seed: int, family: str, *, image: int = 0, repeat: int = 0, model: str = "") -> int:
    """A 63-bit integer seed for one draw, for generators that take an int (``torch.Generator.manual_seed``)."""
    state = seed_sequence(run_seed, family, image=image, repeat=repeat, model=model).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
