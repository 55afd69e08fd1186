"""A StarDist-shaped TensorFlow (Keras) demo package: an object probability map and ``n_rays`` distance maps.

StarDist models, among the zoo's most used, are Keras networks with two outputs: ``prob``, the probability that
a pixel belongs to an object (1 channel, sigmoid inside the network), and ``dist``, the distances from the pixel
to its object's boundary along ``n_rays`` directions (32 by default; linear). :func:`build_stardist_package`
writes such a package (``keras_hdf5`` weights only, channels last, no package code) from a trained demo network:

- the body and the probability head are those of ``nuclei-versatile`` (same weights, so ``prob`` is that model's
  foreground probability and the package is one of its format variants: ``config.bioimage_cte.exported_from``);
- the distance head is a 1x1 convolution fitted by ridge regression on the body's last features, against the
  star-convex ray distances (:func:`ray_distances`) of seeded synthetic nuclei images of that model's domain.

Nothing random is drawn except from fixed seeds, so a rebuild gives the same network. Needs tensorflow
(``pip install 'bioimage-cte[tensorflow]'``); ``python examples/build_demo_zoo.py --only formats`` builds it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["N_RAYS", "STARDIST_NAME", "STARDIST_SOURCE", "build_stardist_package", "fit_dist_head",
           "keras_stardist", "ray_distances"]

STARDIST_NAME = "nuclei-stardist-keras"
#: the demo package whose trained network gives the body and the probability head
STARDIST_SOURCE = "nuclei-versatile"
#: StarDist's default number of rays
N_RAYS = 32
#: seed of the synthetic images the distance head is fitted on, how many, their size
FIT_SEED, FIT_IMAGES, FIT_SHAPE = 2400, 8, (128, 128)
#: ridge penalty of the distance head, per fitted pixel
RIDGE = 1e-3
#: largest |Keras - torch| accepted on the test image, probabilities and distances (in pixels)
TOLERANCE = 1e-3


def ray_distances(labels: np.ndarray, *, n_rays: int = N_RAYS) -> np.ndarray:
    """StarDist's targets: for each pixel of an object, the distance to that object's edge along ``n_rays`` rays.

    Ray ``k`` points at angle ``2 pi k / n_rays`` (y down); it is walked one pixel at a time until it leaves the
    object or the image, and the number of steps is the distance. Background pixels get 0.

    Returns
    -------
    numpy.ndarray
        float32, (n_rays, y, x).

    Examples
    --------
    >>> labels = np.zeros((9, 9), int); labels[2:7, 2:7] = 1
    >>> d = ray_distances(labels, n_rays=4)
    >>> [int(v) for v in d[:, 4, 4]]  # the centre of a 5x5 square: 3 steps to leave it in each direction
    [3, 3, 3, 3]
    >>> float(d[:, 0, 0].max())
    0.0
    """
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n_rays, h, w), np.float32)
    for k in range(n_rays):
        angle = 2 * np.pi * k / n_rays
        active = labels > 0
        for step in range(1, h + w + 1):
            if not active.any():
                break
            y = np.rint(yy + step * np.sin(angle)).astype(int)
            x = np.rint(xx + step * np.cos(angle)).astype(int)
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            same = np.zeros_like(active)
            same[inside] = labels[y[inside], x[inside]] == labels[inside]
            out[k][active & ~same] = step
            active &= same
    return out


def unet_features(net, x):
    """The demo UNet's last decoder features (before its 1x1 head), in torch: (batch, features, y, x)."""
    import torch

    skips = []
    for encoder in net.encoders:
        x = encoder(x)
        skips.append(x)
        x = net.pool(x)
    x = net.bottleneck(x)
    for up, decoder, skip in zip(net.upsamplers, net.decoders, reversed(skips), strict=True):
        x = decoder(torch.cat([up(x), skip], dim=1))
    return x


def fit_dist_head(net, domain, *, preprocessing: str, n_rays: int = N_RAYS) -> tuple[np.ndarray, np.ndarray]:
    """A 1x1 convolution from ``net``'s last features to ray distances: (weight (n_rays, features), bias (n_rays,)).

    Ridge regression on the object pixels of :data:`FIT_IMAGES` synthetic images of ``domain`` (seed
    :data:`FIT_SEED`), as StarDist weighs its distance loss by the object probability.
    """
    import torch

    from bioimage_cte.demozoo.synthetic import render_many
    from bioimage_cte.demozoo.training import normalize

    images, labels = render_many(domain, FIT_IMAGES, FIT_SHAPE, rng=FIT_SEED)
    rows, targets = [], []
    for image, label in zip(images, labels, strict=True):
        x = torch.from_numpy(normalize(image, method=preprocessing)[None, None])
        with torch.no_grad():
            features = unet_features(net, x)[0].numpy()
        fg = label > 0
        rows.append(features[:, fg].T)
        targets.append(ray_distances(label, n_rays=n_rays)[:, fg].T)
    a = np.concatenate(rows).astype(np.float64)
    a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    b = np.concatenate(targets).astype(np.float64)
    solution = np.linalg.solve(a.T @ a + RIDGE * len(a) * np.eye(a.shape[1]), a.T @ b)
    return solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)


def keras_stardist(net, dist_weight: np.ndarray, dist_bias: np.ndarray):
    """A Keras model with StarDist's outputs, ``prob`` (sigmoid of ``net``'s logits) and ``dist``, on (b, y, x, 1)."""
    import keras

    from bioimage_cte.demozoo.keras_export import keras_unet_features

    inputs = keras.Input(shape=(None, None, net.encoders[0][0].in_channels), name="raw")
    features = keras_unet_features(keras, net, inputs)
    prob_layer = keras.layers.Conv2D(1, 1, activation="sigmoid", name="prob")
    prob = prob_layer(features)
    prob_layer.set_weights([net.head.weight.detach().numpy().transpose(2, 3, 1, 0), net.head.bias.detach().numpy()])
    dist_layer = keras.layers.Conv2D(len(dist_bias), 1, name="dist")
    dist = dist_layer(features)
    dist_layer.set_weights([dist_weight.T[None, None], dist_bias])
    return keras.Model(inputs, [prob, dist], name="stardist2d")


def _check(model, net, dist_weight, dist_bias, x) -> list[np.ndarray]:
    """The Keras outputs on ``x`` (1, 1, y, x), after checking them against the torch network they come from."""
    import torch

    with torch.no_grad():
        features = unet_features(net, x)
        prob = torch.sigmoid(net.head(features)).numpy()
    dist = np.einsum("rf,bfyx->bryx", dist_weight, features.numpy()) + dist_bias[None, :, None, None]
    got = [np.asarray(t) for t in model(x.numpy().transpose(0, 2, 3, 1), training=False)]
    for name, want, have in (("prob", prob, got[0]), ("dist", dist, got[1])):
        error = np.abs(have - want.transpose(0, 2, 3, 1)).max()
        if not error < TOLERANCE * max(1.0, float(np.abs(want).max())):
            raise RuntimeError(f"the Keras StarDist {name} differs from the torch network by {error:.2g}")
    return got


def build_stardist_package(zoo: Path, output: Path | None = None) -> Path:
    """Write :data:`STARDIST_NAME` as ``<zoo>/<name>.zip`` (or ``output``) from :data:`STARDIST_SOURCE` in ``zoo``."""
    import torch

    from bioimage_cte.demozoo.archs.unet import UNet2d
    from bioimage_cte.demozoo.formats import read_source_package
    from bioimage_cte.demozoo.synthetic import DOMAINS
    from bioimage_cte.demozoo.training import normalize

    src = read_source_package(zoo / f"{STARDIST_SOURCE}.zip")
    net = UNet2d(**src["kwargs"]).eval()
    net.load_state_dict(src["state"])
    domain = src["rdf"]["config"]["bioimage_cte"]["synthetic_training_domain"]
    weight, bias = fit_dist_head(net, DOMAINS[domain], preprocessing=src["preprocessing"])
    model = keras_stardist(net, weight, bias)
    x = torch.from_numpy(normalize(src["test_image"], method=src["preprocessing"])[None, None])
    prob, dist = _check(model, net, weight, bias, x)
    output = output or zoo / f"{STARDIST_NAME}.zip"
    with tempfile.TemporaryDirectory(prefix="bioimage-cte-stardist-") as tmp:
        work = Path(tmp)
        model.save(str(work / "weights.h5"))  # Keras' legacy HDF5 format, which bioimageio.core's adapter reads
        descr = _descr(work, src, prob, dist, domain=domain)
        output.parent.mkdir(parents=True, exist_ok=True)
        from bioimageio.spec import save_bioimageio_package

        save_bioimageio_package(descr, output_path=output)
    return output


def _descr(work: Path, src: dict, prob: np.ndarray, dist: np.ndarray, *, domain: str):
    import imageio.v3 as iio
    import tensorflow as tf
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        Doi,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        KerasHdf5WeightsDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        TensorId,
        Version,
        WeightsDescr,
    )

    from bioimage_cte.demozoo.packaging import _axes, _cover, _preprocessing_descr

    depth, halo, n_rays = src["kwargs"]["depth"], src["halo"], dist.shape[-1]
    np.save(work / "test_input.npy", src["test_image"].astype(np.float32)[None, :, :, None])
    np.save(work / "test_output_prob.npy", prob)
    np.save(work / "test_output_dist.npy", dist)
    iio.imwrite(work / "cover.png", _cover(src["test_image"], prob[0, :, :, 0]))
    description = (f"StarDist-shaped Keras model: object probability (prob) and {n_rays} ray distances (dist) of "
                   f"nuclei; {STARDIST_SOURCE}'s network with a fitted distance head.")
    (work / "README.md").write_text(
        f"# {STARDIST_NAME}\n\n{description}\n\nOutputs, as StarDist writes them: `prob` (b, y, x, 1), the "
        f"probability that a pixel belongs to a nucleus (sigmoid inside the network), and `dist` (b, y, x, {n_rays}),"
        f" the distance from each pixel to its nucleus' edge along {n_rays} rays. The body and the probability head "
        f"are the trained network of the demo package `{STARDIST_SOURCE}`; the distance head is a 1x1 convolution "
        f"fitted by ridge regression on {FIT_IMAGES} synthetic `{domain}` images (seed {FIT_SEED}). Built by "
        "`bioimage_cte.demozoo.stardist`.\n\n## Validation\n\nA demo model on synthetic data: use it to try the "
        f"TensorFlow path, not on your data.\n\n{src['documentation']}")
    (work / "LICENSE").write_text("MIT License. Demo model of the bioimage-cte project.\n")
    outputs = [
        OutputTensorDescr(id=TensorId(name), axes=_axes("output", channels, depth, halo, channel_last=True),
                          test_tensor=FileDescr(source=work / f"test_output_{name}.npy"),
                          data=IntervalOrRatioDataDescr(type="float32"))
        for name, channels in (("prob", ["prob"]), ("dist", [f"ray{k:02d}" for k in range(n_rays)]))
    ]
    return ModelDescr(
        name=STARDIST_NAME,
        description=description,
        authors=[Author(name="bioimage-cte developers", affiliation="bioimage-cte project")],
        cite=[CiteEntry(text="Schmidt et al. Cell Detection with Star-Convex Polygons (StarDist)",
                        doi=Doi("10.1007/978-3-030-00934-2_30"))],
        license=LicenseId("MIT"),
        documentation=FileDescr(source=work / "README.md"),
        covers=[FileDescr(source=work / "cover.png")],
        attachments=[FileDescr(source=work / "LICENSE")],
        tags=["segmentation", "stardist", "2d", "keras", "tensorflow", "bioimage-cte-demo", "nuclei", "fluorescence"],
        inputs=[InputTensorDescr(id=TensorId("raw"), axes=_axes("input", ["raw"], depth, halo, channel_last=True),
                                 test_tensor=FileDescr(source=work / "test_input.npy"),
                                 data=IntervalOrRatioDataDescr(type="float32"),
                                 preprocessing=[_preprocessing_descr(src["preprocessing"])])],
        outputs=outputs,
        weights=WeightsDescr(keras_hdf5=KerasHdf5WeightsDescr(source=work / "weights.h5",
                                                              tensorflow_version=Version(tf.__version__))),
        config={"bioimage_cte": {"exported_from": STARDIST_SOURCE, "weights": ["keras_hdf5"],
                                 "synthetic_training_domain": domain,
                                 "stardist": {"n_rays": n_rays, "dist_head": "ridge", "fit_seed": FIT_SEED,
                                              "fit_images": FIT_IMAGES}}},
    )
