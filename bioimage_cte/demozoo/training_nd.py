"""Training the demo zoo's networks of other shapes: 3D volumes, several input channels, boundary and softmax outputs.

The same recipe as :mod:`bioimage_cte.demozoo.training` (Adam, cosine schedule, Dice + cross-entropy,
random patches with flips and 90-degree rotations in the image plane, intensity augmentation), for
images with a leading channel axis and 2 or 3 spatial axes. Normalisation is per channel over the
spatial axes, exactly as the packaged ``zero_mean_unit_variance`` / ``scale_range`` with those axes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from skimage.segmentation import find_boundaries

from bioimage_cte.demozoo.training import EPS, PERCENTILES, Preprocessing

#: What a network learns: one foreground channel; foreground and boundary; the boundaries only; or three
#: softmax classes (background, object interior, object boundary).
Targets = Literal["foreground", "foreground+boundary", "boundaries", "classes"]

#: Output channel names per target kind, as the packages declare them.
CHANNEL_NAMES: dict[str, list[str]] = {
    "foreground": ["foreground"],
    "foreground+boundary": ["foreground", "boundary"],
    "boundaries": ["boundaries"],
    "classes": ["background", "nuclei", "boundary"],
}


def normalize_channels(image: np.ndarray, *, method: Preprocessing, spatial_ndim: int) -> np.ndarray:
    """Normalise each channel of a (c, *spatial) image over its spatial axes, as the packaged preprocessing does.

    Examples
    --------
    >>> x = np.array([[[0.0, 2.0]], [[10.0, 30.0]]], dtype=np.float32)  # 2 channels, 1x2 pixels
    >>> normalize_channels(x, method="zero_mean_unit_variance", spatial_ndim=2).round(3).tolist()
    [[[-1.0, 1.0]], [[-1.0, 1.0]]]
    """
    x = image.astype(np.float32)
    axes = tuple(range(x.ndim - spatial_ndim, x.ndim))
    if method == "zero_mean_unit_variance":
        return ((x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + EPS)).astype(np.float32)
    lo = np.quantile(x, PERCENTILES[0] / 100, axis=axes, keepdims=True)
    hi = np.quantile(x, PERCENTILES[1] / 100, axis=axes, keepdims=True)
    return ((x - lo) / (hi - lo + EPS)).astype(np.float32)


def targets_nd(labels: np.ndarray, *, targets: Targets) -> np.ndarray:
    """Training targets (k, *spatial) of instance labels (2D or 3D)."""
    foreground = labels > 0
    boundary = find_boundaries(labels, mode="thick")
    if targets == "foreground":
        out = [foreground]
    elif targets == "foreground+boundary":
        out = [foreground, boundary]
    elif targets == "boundaries":
        out = [boundary & (foreground | find_boundaries(labels, mode="outer"))]
    else:
        interior = foreground & ~boundary
        edge = boundary & foreground
        out = [~(interior | edge), interior, edge]
    return np.stack(out).astype(np.float32)


def _loss(logits, target, *, softmax: bool):
    import torch

    dims = (0, *range(2, logits.ndim))
    if softmax:
        prob = torch.softmax(logits, dim=1)
        ce = torch.nn.functional.cross_entropy(logits, target.argmax(dim=1))
    else:
        prob = torch.sigmoid(logits)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    inter = (prob * target).sum(dim=dims)
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=dims) + target.sum(dim=dims) + 1)
    return ce + dice.mean()


def _batch(pool_x: np.ndarray, pool_y: np.ndarray, *, batch_size: int, patch: tuple[int, ...],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    spatial = len(patch)
    xs, ys = [], []
    for i in rng.integers(0, len(pool_x), batch_size):
        starts = [int(rng.integers(0, n - p + 1)) for n, p in zip(pool_x.shape[2:], patch, strict=True)]
        window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
        x, y = pool_x[i][window], pool_y[i][window]
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
        for axis in range(-spatial, 0):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        # intensity augmentation: gain, offset and noise per channel; the target is unchanged
        gain = rng.uniform(0.7, 1.3, size=(x.shape[0],) + (1,) * spatial)
        x = x * gain + rng.normal(0, 0.2, size=gain.shape)
        x = x + rng.uniform(0, 0.3) * rng.standard_normal(x.shape)
        xs.append(x)
        ys.append(y)
    return np.ascontiguousarray(np.stack(xs), dtype=np.float32), np.ascontiguousarray(np.stack(ys))


def fit_nd(net, pool_x: np.ndarray, pool_y: np.ndarray, *, steps: int, batch_size: int, patch: tuple[int, ...],
           learning_rate: float, softmax: bool, rng: np.random.Generator):
    """Train ``net`` in place on random patches of normalised (n, c, *spatial) images with (n, k, *spatial) targets.

    Returns the network in eval mode. With a fixed ``rng`` seed and one torch thread the result is bit-identical.
    """
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for _ in range(steps):
        x, y = _batch(pool_x, pool_y, batch_size=batch_size, patch=patch, rng=rng)
        opt.zero_grad()
        _loss(net(torch.from_numpy(x)), torch.from_numpy(y), softmax=softmax).backward()
        opt.step()
        sched.step()
    return net.eval()
