"""Seeded generators of synthetic microscopy domains with instance labels.

These images are **synthetic**: they imitate fluorescence nuclei, brightfield-like cells and
EM-like organelles closely enough that segmentation models trained on one domain transfer well
to some others and badly to the rest, which is what a ranking benchmark needs. They are not
real microscopy. The one real labelled image the project ships is the DSB2018 tile set under
``resources/data/dsb2018`` (see its PROVENANCE.md).

A domain is a :class:`Domain`: object shape and density, intensity profile, background,
uneven illumination, optical blur and camera noise, each as a range sampled per image, so one
domain is a distribution of images and not one fixed look.

Examples
--------
>>> import numpy as np
>>> image, labels = render(DOMAINS["nuclei-small-bright"], (64, 64), rng=0)
>>> image.shape, image.dtype, labels.dtype
((64, 64), dtype('float32'), dtype('int32'))
>>> bool(labels.max() > 0)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Parameters of one synthetic imaging domain; every range is sampled uniformly per image.

    Parameters
    ----------
    style : {"fluorescence", "brightfield", "em"}
        Bright objects on a dark background; dark-rimmed grey cells on a bright background;
        textured grey organelles with dark membranes on a noisy grey background.
    radius : (float, float)
        Object radius in pixels (semi-major axis before elongation).
    density : (float, float)
        Fraction of the image the objects try to cover.
    elongation : (float, float)
        Ratio of minor to major axis (1 is round).
    overlap : float
        How far objects may overlap, as a fraction of the smaller radius (0: never touch).
    contrast : (float, float)
        Object signal above (fluorescence) or its difference from (brightfield, em) background.
    object_cv : float
        Spread of the mean intensity between objects (coefficient of variation).
    texture : float
        Amplitude of smooth intra-object texture (chromatin, cytoplasm), relative to contrast.
    background : (float, float)
        Background level in camera units.
    illumination : (float, float)
        Amplitude of the smooth illumination gradient, relative to the background plus contrast.
    blur : (float, float)
        Gaussian PSF sigma in pixels.
    photons : (float, float)
        Photons per camera unit; lower means more shot noise.
    read_noise : (float, float)
        Gaussian camera noise in camera units.
    """

    style: Literal["fluorescence", "brightfield", "em"]
    radius: Range
    density: Range
    elongation: Range = (0.7, 1.0)
    overlap: float = 0.0
    contrast: Range = (400.0, 800.0)
    object_cv: float = 0.2
    texture: float = 0.1
    background: Range = (100.0, 120.0)
    illumination: Range = (0.0, 0.1)
    blur: Range = (0.8, 1.2)
    photons: Range = (2.0, 4.0)
    read_noise: Range = (3.0, 6.0)


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def place_objects(
    shape: tuple[int, int], domain: Domain, rng: np.random.Generator, *, max_objects: int = 400
) -> np.ndarray:
    """Paint non-overlapping (or slightly overlapping) ellipses into an instance label image.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    domain : Domain
        Gives object radius, elongation, density and allowed overlap.
    rng : numpy.random.Generator
        Source of randomness.
    max_objects : int
        Upper bound on the number of objects, to keep dense domains fast.

    Returns
    -------
    numpy.ndarray of int32
        0 is background, objects are labelled 1..N.
    """
    labels = np.zeros(shape, np.int32)
    target_fraction = _u(rng, domain.density)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    n, tries = 0, 0
    while labels.astype(bool).mean() < target_fraction and n < max_objects and tries < 20 * max_objects:
        tries += 1
        a = _u(rng, domain.radius)
        b = a * _u(rng, domain.elongation)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if not inside.any():
            continue
        # Overlap is measured against a shrunken copy, so "overlap=0.3" lets rims touch and merge a little.
        shrink = max(1.0 - domain.overlap, 0.05)
        core = (u / (a * shrink)) ** 2 + (v / (b * shrink)) ** 2 <= 1.0
        if domain.overlap == 0.0:
            grown = ndi.binary_dilation(inside, iterations=1)
            if labels[grown].any():
                continue
        elif labels[core].any():
            continue
        n += 1
        labels[inside & (labels == 0)] = n
    return labels


def _object_intensity(labels: np.ndarray, domain: Domain, contrast: float, rng: np.random.Generator):
    """Per-pixel object signal: per-object mean, smooth texture and (for cells/EM) a dark rim."""
    n = int(labels.max())
    means = contrast * np.clip(1.0 + domain.object_cv * rng.standard_normal(n + 1), 0.2, None)
    means[0] = 0.0
    signal = means[labels]
    texture = 1.0 + domain.texture * _smooth_noise(labels.shape, 1.5, rng)
    signal = signal * texture * (labels > 0)
    if domain.style in ("brightfield", "em"):
        inner = ndi.grey_erosion(labels, size=3) != ndi.grey_dilation(labels, size=3)
        rim = inner & ((labels > 0) | ndi.binary_dilation(labels > 0))
        signal = np.where(rim, -1.5 * contrast, signal)
    return signal


def render(domain: Domain, shape: tuple[int, int], *, rng: np.random.Generator | int | None = None):
    """Render one image of a domain with its instance labels.

    Parameters
    ----------
    domain : Domain
        The imaging domain.
    shape : (int, int)
        Image shape (y, x).
    rng : numpy.random.Generator or int or None
        Seed or generator; the same seed gives the same image.

    Returns
    -------
    image : numpy.ndarray of float32
        Raw image in camera units (not normalised).
    labels : numpy.ndarray of int32
        Instance labels, 0 = background.

    Examples
    --------
    >>> a, _ = render(DOMAINS["em-organelles"], (32, 32), rng=3)
    >>> b, _ = render(DOMAINS["em-organelles"], (32, 32), rng=3)
    >>> bool((a == b).all())
    True
    """
    rng = np.random.default_rng(rng)
    labels = place_objects(shape, domain, rng)
    contrast = _u(rng, domain.contrast)
    background = _u(rng, domain.background)
    signal = _object_intensity(labels, domain, contrast, rng)
    if domain.style == "fluorescence":
        clean = background + signal
    elif domain.style == "brightfield":
        # Cells are slightly darker than the bright background, and their rims darker still.
        clean = background - 0.4 * np.abs(signal) * (signal > 0) + np.minimum(signal, 0) * 0.5
    else:
        texture = 0.35 * contrast * _smooth_noise(shape, 1.0, rng)
        clean = background + texture + np.where(labels > 0, -0.5 * contrast + 0.3 * signal, 0.0)
        clean = clean + np.minimum(signal, 0)
    gradient = _smooth_noise(shape, max(shape) / 4, rng)
    clean = clean * (1.0 + _u(rng, domain.illumination) * gradient)
    clean = ndi.gaussian_filter(np.clip(clean, 0, None), _u(rng, domain.blur))
    photons = _u(rng, domain.photons)
    image = rng.poisson(clean * photons) / photons + _u(rng, domain.read_noise) * rng.standard_normal(shape)
    return image.astype(np.float32), labels


def render_many(domain: Domain, n: int, shape: tuple[int, int], *, rng: np.random.Generator | int | None):
    """Render ``n`` images of one domain; returns stacked images (n, y, x) and labels (n, y, x)."""
    rng = np.random.default_rng(rng)
    pairs = [render(domain, shape, rng=rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


FLUO = "fluorescence"

#: Training domains of the demo zoo's models.
DOMAINS: dict[str, Domain] = {
    "nuclei-small-bright": Domain(FLUO, radius=(3.5, 6.0), density=(0.15, 0.3), photons=(5.0, 8.0),
                                  contrast=(600.0, 1000.0), blur=(0.6, 1.0)),
    "nuclei-large-sparse": Domain(FLUO, radius=(12.0, 20.0), density=(0.1, 0.25), contrast=(300.0, 600.0),
                                  texture=0.25, blur=(1.0, 1.5)),
    "nuclei-dim-blurry": Domain(FLUO, radius=(6.0, 10.0), density=(0.15, 0.3), contrast=(60.0, 140.0),
                                photons=(0.5, 1.0), read_noise=(6.0, 10.0), blur=(1.8, 2.6),
                                illumination=(0.2, 0.4)),
    "nuclei-dense-textured": Domain(FLUO, radius=(7.0, 11.0), density=(0.4, 0.55), overlap=0.25,
                                    texture=0.35, object_cv=0.35, contrast=(300.0, 700.0)),
    "cells-brightfield": Domain("brightfield", radius=(10.0, 18.0), density=(0.3, 0.5), overlap=0.2,
                                contrast=(80.0, 160.0), background=(800.0, 1000.0), texture=0.3,
                                photons=(1.0, 2.0), blur=(1.0, 1.4)),
    "em-organelles": Domain("em", radius=(8.0, 16.0), elongation=(0.35, 0.7), density=(0.1, 0.25),
                            contrast=(60.0, 100.0), background=(400.0, 450.0), texture=0.3,
                            photons=(1.0, 2.0), read_noise=(5.0, 8.0), blur=(0.7, 1.0)),
    "nuclei-touching": Domain(FLUO, radius=(6.0, 12.0), density=(0.35, 0.5), overlap=0.3,
                              contrast=(250.0, 600.0), object_cv=0.3, texture=0.2),
    "cells-touching-brightfield": Domain("brightfield", radius=(9.0, 14.0), density=(0.45, 0.6), overlap=0.3,
                                         contrast=(100.0, 180.0), background=(700.0, 900.0), texture=0.25,
                                         photons=(1.5, 2.5)),
    "nuclei-generic": Domain(FLUO, radius=(5.0, 12.0), density=(0.15, 0.35), overlap=0.1,
                             contrast=(200.0, 700.0), texture=0.2),
    "cells-brightfield-small": Domain("brightfield", radius=(5.0, 9.0), density=(0.25, 0.4), overlap=0.1,
                                      contrast=(120.0, 220.0), background=(900.0, 1100.0), texture=0.25,
                                      photons=(2.0, 4.0), blur=(0.7, 1.0)),
    "cells-lowcontrast-sparse": Domain("brightfield", radius=(15.0, 25.0), density=(0.15, 0.3), overlap=0.1,
                                       contrast=(40.0, 80.0), background=(1000.0, 1300.0), texture=0.3,
                                       photons=(1.0, 2.0), blur=(1.5, 2.2)),
    "em-vesicles": Domain("em", radius=(4.0, 8.0), elongation=(0.8, 1.0), density=(0.15, 0.3),
                          contrast=(60.0, 110.0), background=(380.0, 430.0), texture=0.3,
                          photons=(1.5, 3.0), read_noise=(4.0, 7.0), blur=(0.7, 1.0)),
    "em-clean-large": Domain("em", radius=(14.0, 24.0), elongation=(0.3, 0.6), density=(0.15, 0.3),
                             contrast=(90.0, 140.0), background=(450.0, 520.0), texture=0.25,
                             photons=(3.0, 6.0), read_noise=(2.0, 4.0), blur=(0.6, 0.9)),
    "em-organelles-dense": Domain("em", radius=(6.0, 12.0), elongation=(0.4, 0.8), density=(0.3, 0.45),
                                  overlap=0.1, contrast=(50.0, 90.0), background=(350.0, 420.0), texture=0.35,
                                  photons=(0.8, 1.5), read_noise=(5.0, 8.0), blur=(0.8, 1.1)),
}

#: Task of each target domain: a user ranks the zoo models made for that task (see ``TASK_TAGS``).
TARGET_TASKS: dict[str, str] = {
    "nuclei-medium-noisy": "nuclei",
    "nuclei-dense-gradient": "nuclei",
    "nuclei-tiny-crowded": "nuclei",
    "cells-brightfield-large": "cells",
    "em-organelles-noisy": "mitochondria",
}

#: Target domains: related to the training domains, identical to none of them.
TARGET_DOMAINS: dict[str, Domain] = {
    "nuclei-medium-noisy": Domain(FLUO, radius=(5.0, 9.0), density=(0.15, 0.3), contrast=(120.0, 250.0),
                                  photons=(0.8, 1.5), read_noise=(5.0, 8.0), blur=(1.2, 1.6)),
    "nuclei-dense-gradient": Domain(FLUO, radius=(8.0, 13.0), density=(0.35, 0.5), overlap=0.25,
                                    contrast=(250.0, 500.0), texture=0.3, illumination=(0.3, 0.5),
                                    background=(200.0, 300.0)),
    "nuclei-tiny-crowded": Domain(FLUO, radius=(2.5, 4.5), density=(0.25, 0.4), overlap=0.1,
                                  contrast=(400.0, 900.0), photons=(3.0, 6.0), blur=(0.7, 1.0)),
    "cells-brightfield-large": Domain("brightfield", radius=(14.0, 22.0), density=(0.35, 0.5), overlap=0.2,
                                      contrast=(90.0, 160.0), background=(1200.0, 1500.0), texture=0.35,
                                      photons=(0.8, 1.5), blur=(1.2, 1.6)),
    "em-organelles-noisy": Domain("em", radius=(7.0, 13.0), elongation=(0.3, 0.6), density=(0.12, 0.25),
                                  contrast=(50.0, 90.0), background=(300.0, 360.0), texture=0.35,
                                  photons=(0.6, 1.2), read_noise=(6.0, 10.0), blur=(0.8, 1.2)),
}


#: Task tag a user would filter the zoo by, per imaging style.
STYLE_TASKS: dict[str, str] = {"fluorescence": "nuclei", "brightfield": "cells", "em": "mitochondria"}


def random_domain(style: Literal["fluorescence", "brightfield", "em"], rng: np.random.Generator | int) -> Domain:
    """Draw a domain at random from broad ranges of one imaging style.

    Held-out benchmark targets come from here: their parameters are drawn, not chosen, so a
    choice made on them (e.g. a default consistency score) is not tuned to a hand-made target.
    The ranges cover and exceed those of :data:`DOMAINS` and :data:`TARGET_DOMAINS`.

    Parameters
    ----------
    style : {"fluorescence", "brightfield", "em"}
        Imaging style of the domain.
    rng : numpy.random.Generator or int
        Seed or generator.

    Returns
    -------
    Domain

    Examples
    --------
    >>> d = random_domain("fluorescence", 0)
    >>> d.style, d.radius[0] < d.radius[1]
    ('fluorescence', True)
    """
    rng = np.random.default_rng(rng)

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    if style == "fluorescence":
        r, c, b, ph, rn, d, bg = u(2.5, 14), u(60, 800), u(0.6, 2.2), u(0.5, 6), u(2, 9), u(0.1, 0.4), u(80, 300)
        return Domain(style, radius=(r, r * u(1.3, 1.7)), density=(d, d + 0.15), overlap=u(0, 0.3),
                      contrast=(c, c * 1.8), texture=u(0.05, 0.4), background=(bg, bg * 1.3),
                      illumination=(0.0, u(0.05, 0.5)), blur=(b, b * 1.3), photons=(ph, ph * 1.6),
                      read_noise=(rn, rn * 1.5))
    if style == "brightfield":
        r, c, d, bg, ph, b = u(5, 24), u(40, 200), u(0.15, 0.45), u(700, 1500), u(0.8, 4), u(0.7, 2)
        return Domain(style, radius=(r, r * 1.5), density=(d, d + 0.15), overlap=u(0, 0.3), contrast=(c, c * 1.7),
                      background=(bg, bg * 1.2), texture=u(0.2, 0.4), photons=(ph, ph * 1.6), blur=(b, b * 1.3))
    if style == "em":
        r, c, bg, ph, rn, b, e = u(4, 20), u(50, 130), u(300, 500), u(0.6, 5), u(2, 10), u(0.6, 1.2), u(0.3, 0.9)
        return Domain(style, radius=(r, r * 1.6), elongation=(e, min(1.0, e + 0.3)), density=(u(0.1, 0.3), 0.35),
                      contrast=(c, c * 1.6), background=(bg, bg * 1.15), texture=u(0.25, 0.35),
                      photons=(ph, ph * 1.7), read_noise=(rn, rn * 1.5), blur=(b, b * 1.3))
    raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLE_TASKS)}")
