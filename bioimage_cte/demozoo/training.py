"""Training small UNets on synthetic domains: how the demo zoo's models are made.

The normalisations here reproduce bioimageio.core's ``zero_mean_unit_variance`` and
``scale_range`` exactly (same eps, ddof=0 std, linear quantiles), so a network trained here
sees at training time what the packaged pipeline feeds it at prediction time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.segmentation import find_boundaries

from bioimage_cte.demozoo.synthetic import Domain, render_many

Preprocessing = Literal["zero_mean_unit_variance", "scale_range"]
Outputs = Literal["foreground", "foreground+boundary"]
#: Training loss: the demo zoo's Dice + binary cross-entropy, or one of the two alone (other output calibration).
Loss = Literal["bce+dice", "bce", "dice"]

#: Percentiles of the ``scale_range`` preprocessing used by the demo zoo.
PERCENTILES = (1.0, 99.8)
EPS = 1e-6


def normalize(image: np.ndarray, *, method: Preprocessing,
              percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Normalise a 2-D image exactly as the packaged bioimageio preprocessing does.

    ``percentiles`` are the (min, max) percentiles of ``scale_range`` (the demo zoo's by default).

    Examples
    --------
    >>> x = np.array([[0.0, 2.0], [4.0, 6.0]], dtype=np.float32)
    >>> [round(float(v), 3) for v in normalize(x, method="zero_mean_unit_variance").ravel()]
    [-1.342, -0.447, 0.447, 1.342]
    """
    x = image.astype(np.float32)
    if method == "zero_mean_unit_variance":
        return ((x - x.mean()) / (x.std() + EPS)).astype(np.float32)
    if method == "scale_range":
        lo, hi = np.quantile(x, [percentiles[0] / 100, percentiles[1] / 100])
        return ((x - lo) / (hi - lo + EPS)).astype(np.float32)
    raise ValueError(f"unknown preprocessing {method!r}: use 'zero_mean_unit_variance' or 'scale_range'")


def targets_from_labels(labels: np.ndarray, *, outputs: Outputs) -> np.ndarray:
    """Training targets (channel, y, x): foreground, and the thick instance boundaries if asked."""
    foreground = (labels > 0).astype(np.float32)
    if outputs == "foreground":
        return foreground[None]
    boundary = find_boundaries(labels, mode="thick").astype(np.float32)
    return np.stack([foreground, boundary])


@dataclass(frozen=True)
class TrainingConfig:
    """How one model is trained.

    Parameters
    ----------
    features, depth : int
        UNet width at the first level and number of down-samplings.
    steps : int
        Optimiser steps (the under-trained demo model uses very few).
    batch_size, patch : int
        Patches per step and their side length (a multiple of ``2**depth``).
    pool_size, pool_shape : int, (int, int)
        Number and size of pre-rendered images patches are cut from.
    learning_rate : float
        Adam learning rate.
    augment : bool
        Intensity augmentation (contrast, gamma, additive noise, blur), as real zoo models are trained with.
    geometric : bool
        Random flips and 90-degree rotations of each patch (the demo zoo's recipe); off, the network is not
        trained to be equivariant to them.
    loss : {"bce+dice", "bce", "dice"}
        Training loss; Dice alone gives over-confident probabilities, BCE alone softer ones.
    seed : int
        Seeds data, initialisation and batches; the same seed gives the same weights.
    """

    features: int = 8
    depth: int = 2
    steps: int = 400
    batch_size: int = 8
    patch: int = 96
    pool_size: int = 48
    pool_shape: tuple[int, int] = (128, 128)
    learning_rate: float = 3e-3
    seed: int = 0
    augment: bool = True
    geometric: bool = True
    loss: Loss = "bce+dice"


def _loss(logits, target, kind: Loss = "bce+dice"):
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(0, 2, 3))
    dice = (1 - (2 * inter + 1) / (prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)).mean()
    return {"bce+dice": bce + dice, "bce": bce, "dice": dice}[kind]


def _augment_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast, gamma, blur and noise on a normalised patch; the label is unchanged."""
    from scipy.ndimage import gaussian_filter

    lo, hi = float(x.min()), float(x.max())
    unit = (x - lo) / (hi - lo + EPS)
    unit = unit ** rng.uniform(0.7, 1.5)
    x = (unit * (hi - lo) + lo) * rng.uniform(0.7, 1.3) + rng.normal(0, 0.2)
    if rng.random() < 0.3:
        x = gaussian_filter(x, rng.uniform(0.5, 1.5))
    return (x + rng.uniform(0, 0.4) * x.std() * rng.standard_normal(x.shape)).astype(np.float32)


def _batch(pool_x: np.ndarray, pool_y: np.ndarray, *, batch_size: int, patch: int, augment: bool,
           rng: np.random.Generator, geometric: bool = True):
    idx = rng.integers(0, len(pool_x), batch_size)
    xs, ys = [], []
    for i in idx:
        y0 = rng.integers(0, pool_x.shape[1] - patch + 1)
        x0 = rng.integers(0, pool_x.shape[2] - patch + 1)
        x = pool_x[i, y0 : y0 + patch, x0 : x0 + patch]
        y = pool_y[i, :, y0 : y0 + patch, x0 : x0 + patch]
        if geometric:
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), np.rot90(y, k, axes=(1, 2))
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, :, ::-1]
        if augment:
            x = _augment_intensity(x, rng)
        xs.append(x[None])
        ys.append(y)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def train_unet(
    domain: Domain,
    *,
    preprocessing: Preprocessing,
    outputs: Outputs = "foreground",
    config: TrainingConfig = TrainingConfig(),
    label_filter: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """Train a :class:`~bioimage_cte.demozoo.archs.unet.UNet2d` on images rendered from ``domain``.

    Parameters
    ----------
    domain : Domain
        Training domain.
    preprocessing : {"zero_mean_unit_variance", "scale_range"}
        Normalisation applied per image, as the package will declare it.
    outputs : {"foreground", "foreground+boundary"}
        One foreground channel, or foreground and instance-boundary channels.
    config : TrainingConfig
        Size, budget and seed.
    label_filter : callable, optional
        Maps instance labels to the labels to learn (a "mismatched task" model learns only some objects).

    Returns
    -------
    torch.nn.Module
        The trained network in eval mode (outputs logits).
    """
    import torch

    from bioimage_cte.demozoo.archs.unet import UNet2d

    rng = np.random.default_rng(config.seed)
    images, labels = render_many(domain, config.pool_size, config.pool_shape, rng=rng)
    if label_filter is not None:
        labels = np.stack([label_filter(lab) for lab in labels])
    pool_x = np.stack([normalize(im, method=preprocessing) for im in images])
    pool_y = np.stack([targets_from_labels(lab, outputs=outputs) for lab in labels])
    n_out = 1 if outputs == "foreground" else 2
    # fork_rng keeps the caller's global torch RNG untouched while seeding initialisation.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = UNet2d(1, n_out, features=config.features, depth=config.depth)
    return fit(net, pool_x, pool_y, steps=config.steps, batch_size=config.batch_size, patch=config.patch,
               learning_rate=config.learning_rate, augment=config.augment, rng=rng, geometric=config.geometric,
               loss=config.loss)


def fit(
    net,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    patch: int,
    learning_rate: float,
    augment: bool,
    rng: np.random.Generator,
    on_step: Callable[[int, object], None] | None = None,
    geometric: bool = True,
    loss: Loss = "bce+dice",
):
    """Train ``net`` in place on random patches of normalised images: Adam, cosine schedule, Dice + BCE loss.

    This is the loop the demo zoo was trained with; fine-tuning (:mod:`bioimage_cte.studies.finetune`) runs the same
    loop from a pre-trained network.

    Parameters
    ----------
    net : torch.nn.Module
        Network returning logits; trained in place.
    pool_x : numpy.ndarray
        Normalised images (n, y, x), all the same shape, at least ``patch`` pixels on each side.
    pool_y : numpy.ndarray
        Targets (n, channel, y, x) from :func:`targets_from_labels`.
    steps, batch_size, patch : int
        Optimiser steps, patches per step and patch side (a multiple of the network's ``2**depth``).
    learning_rate : float
        Initial Adam learning rate, annealed to 0 over ``steps`` (cosine).
    augment : bool
        Random intensity augmentation of each patch.
    rng : numpy.random.Generator
        Draws patches and augmentations; with a fixed seed and one torch thread the result is bit-identical.
    on_step : callable, optional
        Called as ``on_step(step, net)`` after every step (1-based), e.g. to evaluate a convergence curve.
        The network is in train mode when it returns; put it in eval mode to evaluate and back.
    geometric : bool
        Random flips and 90-degree rotations of each patch (the demo zoo's recipe).
    loss : {"bce+dice", "bce", "dice"}
        Training loss.

    Returns
    -------
    torch.nn.Module
        ``net``, in eval mode.
    """
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for step in range(1, steps + 1):
        x, y = _batch(pool_x, pool_y, batch_size=batch_size, patch=patch, augment=augment, rng=rng,
                      geometric=geometric)
        opt.zero_grad()
        _loss(net(torch.from_numpy(x)), torch.from_numpy(y), loss).backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, net)
            net.train()
    return net.eval()
