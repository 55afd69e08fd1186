"""Seeded **synthetic** domains of the zoo's other shapes: 3D nuclei volumes and 2-channel (nuclei + membrane) cells.

Like :mod:`bioimage_cte.demozoo.synthetic` these imitate microscopy closely enough for models trained on
one domain to transfer well to some others and badly to the rest; they are not microscopy. A domain is
a :class:`~bioimage_cte.demozoo.synthetic.Domain` (each range sampled per image) rendered by
:func:`render_volume` (fluorescent nuclei as ellipsoids in a (z, y, x) stack, blurred more along z, as a
confocal stack is) or :func:`render_two_channel` (touching cells: channel 0 their nuclei, channel 1 their
membranes; the labels are the cells).

Examples
--------
>>> volume, labels = render_volume(DOMAINS_3D["nuclei3d-small"], (8, 32, 32), rng=0)
>>> volume.shape, labels.dtype, bool(labels.max() > 0)
((8, 32, 32), dtype('int32'), True)
>>> image, cells = render_two_channel(DOMAINS_2CH["cells2ch-small"], (48, 48), rng=0)
>>> image.shape, cells.shape
((2, 48, 48), (48, 48))
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from bioimage_cte.demozoo.synthetic import FLUO, Domain, _u, place_objects

#: Voxel aspect of the 3D domains: z steps are this many times the xy pixel size (objects look flatter in voxels).
Z_ANISOTROPY = 2.0


def _smooth(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def place_ellipsoids(shape: tuple[int, int, int], domain: Domain, rng: np.random.Generator, *,
                     max_objects: int = 300) -> np.ndarray:
    """Paint non-touching ellipsoids (flattened along z by :data:`Z_ANISOTROPY`) into a 3D label volume."""
    labels = np.zeros(shape, np.int32)
    target = _u(rng, domain.density)
    n, tries = 0, 0
    while labels.astype(bool).mean() < target and n < max_objects and tries < 20 * max_objects:
        tries += 1
        a = _u(rng, domain.radius)
        b = a * _u(rng, domain.elongation)
        c = a * _u(rng, domain.elongation) / Z_ANISOTROPY
        centre = [rng.uniform(0, s) for s in shape]
        theta = rng.uniform(0, np.pi)
        lo = [max(0, int(centre[i] - r - 2)) for i, r in enumerate((c, a, a))]
        hi = [min(shape[i], int(centre[i] + r + 3)) for i, r in enumerate((c, a, a))]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        zz, yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dz, dy, dx = zz - centre[0], yy - centre[1], xx - centre[2]
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2 <= 1.0
        if not inside.any():
            continue
        box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if box[ndi.binary_dilation(inside)].any():
            continue
        n += 1
        box[inside] = n
    return labels


def render_volume(domain: Domain, shape: tuple[int, int, int], *,
                  rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one fluorescent-nuclei volume (z, y, x) in camera units, with its 3D instance labels.

    The PSF is ``Z_ANISOTROPY`` times wider along z than in the plane (in voxels, the same in microns).
    """
    rng = np.random.default_rng(rng)
    labels = place_ellipsoids(shape, domain, rng)
    contrast, background = _u(rng, domain.contrast), _u(rng, domain.background)
    means = contrast * np.clip(1.0 + domain.object_cv * rng.standard_normal(int(labels.max()) + 1), 0.2, None)
    means[0] = 0.0
    signal = means[labels] * (1.0 + domain.texture * _smooth(shape, 1.5, rng)) * (labels > 0)
    clean = (background + signal) * (1.0 + _u(rng, domain.illumination) * _smooth(shape, max(shape) / 4, rng))
    blur = _u(rng, domain.blur)
    clean = ndi.gaussian_filter(np.clip(clean, 0, None), (blur * Z_ANISOTROPY, blur, blur))
    photons = _u(rng, domain.photons)
    image = rng.poisson(clean * photons) / photons + _u(rng, domain.read_noise) * rng.standard_normal(shape)
    return image.astype(np.float32), labels


def render_two_channel(domain: Domain, shape: tuple[int, int], *,
                       rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render touching cells as two channels (c, y, x): 0 = nuclei stain, 1 = membrane stain; labels are the cells.

    Each cell's nucleus is its core (the pixels deeper inside the cell than half its largest depth);
    the membrane channel is bright on the cell boundaries, dim in the cytoplasm.
    """
    rng = np.random.default_rng(rng)
    cells = place_objects(shape, domain, rng)
    boundaries = find_boundaries(cells, mode="inner")
    depth = ndi.distance_transform_edt((cells > 0) & ~boundaries)
    deepest = np.zeros(int(cells.max()) + 1)
    if cells.max():
        deepest[1:] = ndi.maximum(depth, cells, index=np.arange(1, cells.max() + 1))
    nuclei = (cells > 0) & (depth > 0.5 * deepest[cells])
    contrast, background = _u(rng, domain.contrast), _u(rng, domain.background)
    means = contrast * np.clip(1.0 + domain.object_cv * rng.standard_normal(int(cells.max()) + 1), 0.2, None)
    nuclear = means[cells] * nuclei * (1.0 + domain.texture * _smooth(shape, 1.5, rng))
    membrane = 0.8 * contrast * ndi.binary_dilation(boundaries) * (1.0 + 0.3 * _smooth(shape, 2.0, rng))
    membrane = membrane + 0.1 * contrast * (cells > 0)
    channels = []
    for clean in (background + nuclear, background + membrane):
        clean = clean * (1.0 + _u(rng, domain.illumination) * _smooth(shape, max(shape) / 4, rng))
        clean = ndi.gaussian_filter(np.clip(clean, 0, None), _u(rng, domain.blur))
        photons = _u(rng, domain.photons)
        noise = _u(rng, domain.read_noise) * rng.standard_normal(shape)
        channels.append(rng.poisson(clean * photons) / photons + noise)
    return np.stack(channels).astype(np.float32), cells


#: Training domains of the 3D demo models (fluorescent nuclei in z-stacks).
DOMAINS_3D: dict[str, Domain] = {
    "nuclei3d-small": Domain(FLUO, radius=(4.0, 6.0), density=(0.1, 0.2), contrast=(500.0, 900.0),
                             photons=(4.0, 8.0), blur=(0.6, 0.9)),
    "nuclei3d-large": Domain(FLUO, radius=(9.0, 13.0), density=(0.1, 0.2), contrast=(250.0, 500.0),
                             texture=0.25, blur=(1.0, 1.4)),
    "nuclei3d-dim": Domain(FLUO, radius=(5.0, 8.0), density=(0.1, 0.2), contrast=(50.0, 110.0),
                           photons=(0.5, 1.0), read_noise=(6.0, 10.0), blur=(1.4, 2.0), illumination=(0.2, 0.4)),
}

#: Training domains of the 2-channel (nuclei + membrane) demo models.
DOMAINS_2CH: dict[str, Domain] = {
    "cells2ch-small": Domain(FLUO, radius=(6.0, 10.0), density=(0.45, 0.6), overlap=0.3, contrast=(400.0, 800.0),
                             photons=(3.0, 6.0), blur=(0.6, 1.0)),
    "cells2ch-large": Domain(FLUO, radius=(14.0, 20.0), density=(0.45, 0.6), overlap=0.3, contrast=(300.0, 600.0),
                             texture=0.25, blur=(1.0, 1.4)),
    "cells2ch-dim": Domain(FLUO, radius=(8.0, 14.0), density=(0.4, 0.55), overlap=0.3, contrast=(60.0, 120.0),
                           photons=(0.6, 1.2), read_noise=(6.0, 10.0), blur=(1.4, 2.0), illumination=(0.2, 0.4)),
}

#: The labelled targets of these shapes: related to the training domains, identical to none.
TARGET_DOMAINS_ND: dict[str, Domain] = {
    "nuclei3d-medium-noisy": Domain(FLUO, radius=(6.0, 9.0), density=(0.12, 0.22), contrast=(150.0, 300.0),
                                    photons=(1.0, 2.0), read_noise=(4.0, 7.0), blur=(1.0, 1.3)),
    "cells2ch-medium": Domain(FLUO, radius=(9.0, 14.0), density=(0.45, 0.6), overlap=0.3, contrast=(200.0, 400.0),
                              photons=(1.5, 3.0), read_noise=(4.0, 7.0), blur=(0.9, 1.3)),
}
