"""Linear centered kernel alignment (CKA) between feature maps of segmentation networks.

Two uses (issue #7): a zoo similarity map, CKA between different models' bottleneck features on the same
target images (near 1: near-duplicate representations); and feature reuse, the layer-wise CKA between a
pre-trained network and the same network after fine-tuning (near 1: the layer was reused, low: it changed).

Feature matrices are (samples, features). A convolutional feature map (channel, y, x) gives one sample per
spatial position and one feature per channel, so CKA compares what the networks compute *at the same place
of the same image*. Positions are subsampled with a seeded RNG to bound memory (CKA is quadratic in the
number of features only, but full-resolution maps of several images hold millions of positions); both
networks of a comparison see the same positions. Kornblith et al., "Similarity of Neural Network
Representations Revisited", ICML 2019.

Only numpy at import; the feature-extraction functions import torch when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["cka_matrix", "default_layers", "feature_maps", "layerwise_cka", "linear_cka", "sample_positions"]


def linear_cka(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Linear CKA between two feature matrices of the same samples.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``. It is 1 for
    identical features, invariant to orthogonal transforms and isotropic scaling of either matrix, and near
    0 for independent features (with many more samples than features).

    Parameters
    ----------
    x : array_like, shape (n_samples, p)
    y : array_like, shape (n_samples, q)
        The same samples in the same order; the feature counts may differ.

    Returns
    -------
    float
        In [0, 1]; ``nan`` if either matrix is constant (no variance to align).

    Raises
    ------
    ValueError
        If the inputs are not 2-D or have different numbers of samples.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    >>> round(linear_cka(x, 3.0 * x @ q), 6)
    1.0
    >>> linear_cka(x, rng.normal(size=(200, 5))) < 0.1
    True
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"linear_cka needs two (n_samples, features) matrices of the same samples; got shapes "
                         f"{a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    # Feature-space form: the Gram matrices are features x features, so memory does not grow with samples.
    cross = np.linalg.norm(b.T @ a) ** 2
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / norm) if norm > 0 else float("nan")


def cka_matrix(features: Sequence[npt.ArrayLike]) -> np.ndarray:
    """Pairwise linear CKA of several feature matrices of the same samples (symmetric, ones on the diagonal).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> x = rng.normal(size=(100, 4))
    >>> m = cka_matrix([x, 2 * x, rng.normal(size=(100, 3))])
    >>> m.shape, round(float(m[0, 1]), 6), bool(m[0, 2] < 0.2)
    ((3, 3), 1.0, True)
    """
    n = len(features)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(features[i], features[j])
    return out


def sample_positions(n_positions: int, n_samples: int | None, *, rng: np.random.Generator | int | None) -> np.ndarray:
    """Sorted indices of at most ``n_samples`` of ``n_positions`` positions (all of them if ``None`` or more).

    Examples
    --------
    >>> sample_positions(10, 3, rng=0).tolist()
    [5, 6, 9]
    >>> len(sample_positions(10, None, rng=0))
    10
    """
    if n_samples is None or n_samples >= n_positions:
        return np.arange(n_positions)
    return np.sort(np.random.default_rng(rng).choice(n_positions, n_samples, replace=False))


def default_layers(net: Any) -> list[str]:
    """The blocks of a UNet-like network whose outputs are compared layer by layer.

    The children of the top-level module lists (``encoders.0``, ``decoders.1``, ...) and the other top-level
    modules (``bottleneck``, ``head``), in definition order; modules without parameters (pooling) are left
    out, since they are called several times per forward pass or just repeat their input.
    """
    import torch

    names = []
    for name, child in net.named_children():
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential) and not _is_block(child):
            names += [f"{name}.{sub}" for sub, m in child.named_children() if any(True for _ in m.parameters())]
        elif any(True for _ in child.parameters()):
            names.append(name)
    return names


def _is_block(module: Any) -> bool:
    # A Sequential of layers (conv, norm, relu) is one block; a list of blocks is split into its blocks.
    import torch

    return isinstance(module, torch.nn.Sequential) and not any(
        isinstance(m, torch.nn.Sequential | torch.nn.ModuleList) for m in module.children())


def feature_maps(
    net: Any,
    inputs: Sequence[np.ndarray],
    layers: Sequence[str],
    *,
    grid: tuple[int, int] | None = None,
    n_samples: int | None = 4096,
    rng: np.random.Generator | int | None = 0,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Feature matrices (positions, channels) of named layers of ``net`` on a list of inputs.

    Parameters
    ----------
    net : torch.nn.Module
        Network in eval mode; not changed.
    inputs : sequence of numpy.ndarray
        Input images (y, x), already normalised as the network expects (``prepare`` can do it, and pad).
    layers : sequence of str
        Module names as in ``net.named_modules()``; each must run once per forward pass.
    grid : (int, int), optional
        Average-pool every map to this (y, x) size first, so networks of different depth (bottlenecks at
        different resolutions) give comparable samples; default: each layer's own resolution.
    n_samples : int or None
        Positions kept per layer over all inputs (seeded; the same positions for every network given the
        same ``rng`` and map sizes). ``None`` keeps all.
    rng : numpy.random.Generator or int or None
        Seed of the position sample.
    prepare : callable, optional
        Maps each input image to the network's input array (y, x), e.g. normalisation and padding.

    Returns
    -------
    dict of str to numpy.ndarray
        Per layer a float64 array (samples, channels).

    Raises
    ------
    ValueError
        If a layer is not a module of ``net`` or did not produce one 4-D tensor per forward pass.
    """
    import torch

    modules = dict(net.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the network; available: {', '.join(list(modules)[1:])}")
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    hooks = [modules[name].register_forward_hook(lambda m, a, out, name=name: captured[name].append(out.detach()))
             for name in layers]
    per_layer: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    try:
        with torch.no_grad():
            for image in inputs:
                x = prepare(image) if prepare is not None else image
                for name in layers:
                    captured[name].clear()
                net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None])
                for name in layers:
                    if len(captured[name]) != 1 or captured[name][0].ndim != 4:
                        raise ValueError(f"layer {name!r} ran {len(captured[name])} times or gave no 4-D feature "
                                         "map; pick layers that run once per forward pass")
                    fmap = captured[name][0]
                    if grid is not None:
                        fmap = torch.nn.functional.adaptive_avg_pool2d(fmap, grid)
                    per_layer[name].append(fmap[0].flatten(1).T.double().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    gen = np.random.default_rng(rng)
    out = {}
    for name in layers:
        stacked = np.concatenate(per_layer[name])
        out[name] = stacked[sample_positions(len(stacked), n_samples, rng=gen)]
    return out


def layerwise_cka(
    before: Any,
    after: Any,
    inputs: Sequence[np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    n_samples: int | None = 4096,
    rng: int = 0,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Linear CKA per layer between two networks of the same architecture (e.g. pre-trained vs fine-tuned).

    Both networks see the same inputs and the same sampled positions. Default layers:
    :func:`default_layers` of ``before``.

    Returns
    -------
    dict of str to float
        Layer name to CKA, in network order; 1 means the layer's representation is unchanged up to rotation
        and scale.
    """
    names = list(layers) if layers is not None else default_layers(before)
    a = feature_maps(before, inputs, names, n_samples=n_samples, rng=rng, prepare=prepare)
    b = feature_maps(after, inputs, names, n_samples=n_samples, rng=rng, prepare=prepare)
    return {name: linear_cka(a[name], b[name]) for name in names}
