"""Build the demo zoo's packages of other shapes and their labelled targets, deterministically from seeds.

    python examples/build_shape_zoo.py                 # models + targets
    python examples/build_shape_zoo.py --only data     # the 3D and the 2-channel target only
    python examples/build_shape_zoo.py --models nuclei3d-small cells2ch-unet

Shapes, as the BioImage Model Zoo has them: 3D nuclei UNets (``zyx`` input), 2-channel-input models
(nuclei + membrane), a foreground+boundary model, a boundary-only model, a multi-class softmax model,
and non-UNet networks (an encoder-decoder without skips, a ResNet-like encoder). Every model is trained
briefly on **synthetic** data (:mod:`bioimage_cte.demozoo.synthetic_nd`, :mod:`bioimage_cte.demozoo.synthetic`)
and written to ``resources/zoo/<name>.zip``; targets go to ``resources/data/<target>/{images,labels}``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from bioimage_cte.demozoo.packaging import PackageInfo
from bioimage_cte.demozoo.packaging_nd import Architecture, Shape, build_package_nd
from bioimage_cte.demozoo.synthetic import DOMAINS, render
from bioimage_cte.demozoo.synthetic_nd import (
    DOMAINS_2CH,
    DOMAINS_3D,
    TARGET_DOMAINS_ND,
    render_two_channel,
    render_volume,
)
from bioimage_cte.demozoo.training import Preprocessing
from bioimage_cte.demozoo.training_nd import CHANNEL_NAMES, Targets, fit_nd, normalize_channels, targets_nd

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"

Kind = Literal["3d", "2ch", "2d"]


@dataclass(frozen=True)
class ShapeModel:
    name: str
    kind: Kind
    domain: str
    description: str
    architecture: Architecture
    targets: Targets = "foreground"
    preprocessing: Preprocessing = "zero_mean_unit_variance"
    steps: int = 200
    seed: int = 0
    tags: tuple[str, ...] = ()


def _unet3d(**kw) -> Architecture:
    return Architecture("unet3d.py", "UNet3d", {"in_channels": 1, "out_channels": 1, "features": 4, "depth": 2} | kw)


def _arch2d(file: str, callable_: str, **kw) -> Architecture:
    return Architecture(file, callable_, {"in_channels": 2, "out_channels": 1, "features": 8, "depth": 2} | kw)


NUC3D = ("nuclei", "3d", "fluorescence")
CELLS2CH = ("cells", "membrane", "fluorescence", "multi-channel")

MODELS = [
    ShapeModel("nuclei3d-small", "3d", "nuclei3d-small", "Small bright nuclei in confocal-like z-stacks (3D UNet).",
               _unet3d(), seed=101, tags=NUC3D),
    ShapeModel("nuclei3d-large", "3d", "nuclei3d-large", "Large textured nuclei in z-stacks (3D UNet).",
               _unet3d(), preprocessing="scale_range", seed=102, tags=NUC3D),
    ShapeModel("nuclei3d-dim", "3d", "nuclei3d-dim", "Dim, blurred nuclei in z-stacks under uneven illumination.",
               _unet3d(), preprocessing="scale_range", seed=103, tags=NUC3D),
    ShapeModel("weak-nuclei3d-undertrained", "3d", "nuclei3d-small", "Deliberately weak 3D UNet: 5 steps.",
               _unet3d(), steps=5, seed=104, tags=NUC3D + ("weak",)),
    ShapeModel("cells2ch-unet", "2ch", "cells2ch-small", "Touching cells from nuclei + membrane stains (UNet).",
               _arch2d("unet.py", "UNet2d"), seed=111, tags=CELLS2CH),
    ShapeModel("cells2ch-instance", "2ch", "cells2ch-large",
               "Large touching cells from nuclei + membrane stains; foreground and boundary probabilities.",
               _arch2d("unet.py", "UNet2d", out_channels=2), targets="foreground+boundary",
               preprocessing="scale_range", seed=112, tags=CELLS2CH + ("instance-segmentation",)),
    ShapeModel("cells2ch-encdec", "2ch", "cells2ch-dim",
               "Dim cells from nuclei + membrane stains; encoder-decoder without skip connections.",
               _arch2d("encdec.py", "EncoderDecoder2d", features=4, depth=3), preprocessing="scale_range", seed=113,
               tags=CELLS2CH),
    ShapeModel("cells2ch-resnet", "2ch", "cells2ch-small",
               "Cells from nuclei + membrane stains; ResNet-like encoder with a feature-pyramid decoder.",
               _arch2d("encdec.py", "ResNetFPN2d", features=4, depth=3), seed=114, tags=CELLS2CH),
    ShapeModel("nuclei-boundaries", "2d", "nuclei-touching", "Boundaries of touching nuclei only (no foreground map).",
               _arch2d("unet.py", "UNet2d", in_channels=1), targets="boundaries", seed=121,
               tags=("nuclei", "boundaries", "nuclei-boundaries", "fluorescence")),
    ShapeModel("nuclei-3class", "2d", "nuclei-touching",
               "Touching nuclei as three softmax classes: background, nucleus interior, boundary.",
               _arch2d("unet.py", "UNet2d", in_channels=1, out_channels=3), targets="classes", seed=122,
               tags=("nuclei", "multi-class", "semantic-segmentation", "fluorescence")),
]

#: (pool images, pool shape, patch, batch) per kind: small, so that the whole build stays within minutes on a CPU.
POOLS = {"3d": (10, (24, 64, 64), (16, 48, 48), 2), "2ch": (24, (128, 128), (64, 64), 8),
         "2d": (24, (128, 128), (64, 64), 8)}
TEST_SHAPES = {"3d": (16, 48, 48), "2ch": (96, 96), "2d": (96, 96)}
TARGETS = {  # name: (kind, images, shape, seed, task, axes)
    "nuclei3d-medium-noisy": ("3d", 4, (32, 96, 96), 6000, "nuclei", "zyx"),
    "cells2ch-medium": ("2ch", 8, (192, 192), 6001, "cells", "cyx"),
}


def _render(kind: Kind, domain: str, shape: tuple[int, ...], rng: np.random.Generator):
    if kind == "3d":
        volume, labels = render_volume(DOMAINS_3D.get(domain) or TARGET_DOMAINS_ND[domain], shape, rng=rng)
        return volume[None], labels
    if kind == "2ch":
        return render_two_channel(DOMAINS_2CH.get(domain) or TARGET_DOMAINS_ND[domain], shape, rng=rng)
    image, labels = render(DOMAINS[domain], shape, rng=rng)
    return image[None], labels


def _shape(model: ShapeModel) -> Shape:
    depth = model.architecture.kwargs["depth"]
    channels = CHANNEL_NAMES[model.targets]
    if model.kind == "3d":
        return Shape("zyx", ["nuclei"], channels, minimum={"z": 16, "y": 32, "x": 32},
                     step={a: 2**depth for a in "zyx"}, halo={"z": 4, "y": 8, "x": 8})
    inputs = ["nuclei", "membrane"] if model.kind == "2ch" else ["raw"]
    return Shape("yx", inputs, channels, minimum={"y": 64, "x": 64}, step={a: 2**depth for a in "yx"},
                 halo={"y": 16, "x": 16}, postprocessing="softmax" if model.targets == "classes" else "sigmoid")


def build_model(model: ShapeModel) -> tuple[str, float]:
    import importlib

    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    rng = np.random.default_rng(model.seed)
    n, pool_shape, patch, batch = POOLS[model.kind]
    pairs = [_render(model.kind, model.domain, pool_shape, rng) for _ in range(n)]
    spatial = len(pool_shape)
    pool_x = np.stack([normalize_channels(x, method=model.preprocessing, spatial_ndim=spatial) for x, _ in pairs])
    pool_y = np.stack([targets_nd(y, targets=model.targets) for _, y in pairs])
    module = importlib.import_module(f"bioimage_cte.demozoo.archs.{model.architecture.file.removesuffix('.py')}")
    with torch.random.fork_rng():
        torch.manual_seed(model.seed)
        net = getattr(module, model.architecture.callable)(**model.architecture.kwargs)
    net = fit_nd(net, pool_x, pool_y, steps=model.steps, batch_size=batch, patch=patch, learning_rate=3e-3,
                 softmax=model.targets == "classes", rng=rng)
    test_image, _ = _render(model.kind, model.domain, TEST_SHAPES[model.kind], np.random.default_rng(1000 + model.seed))
    info = PackageInfo(
        name=model.name, description=model.description,
        tags=("segmentation", "pytorch", "bioimage-cte-demo", "3d" if model.kind == "3d" else "2d", *model.tags),
        documentation=(f"# {model.name}\n\n{model.description}\n\nA demo model of the bioimage-cte project, trained "
                       f"for {model.steps} steps on **synthetic** images of the `{model.domain}` domain "
                       "(`bioimage_cte.demozoo.synthetic_nd`); not for real data.\n"),
        config={"synthetic_training_domain": model.domain, "training": {"steps": model.steps, "seed": model.seed,
                                                                         "pool": n, "patch": list(patch)}},
    )
    build_package_nd(net, test_image, ZOO / f"{model.name}.zip", info=info, shape=_shape(model),
                     architecture=model.architecture, preprocessing=model.preprocessing)
    return model.name, time.perf_counter() - start


def build_targets() -> None:
    for name, (kind, count, shape, seed, task, axes) in TARGETS.items():
        images, labels = DATA / name / "images", DATA / name / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(count):
            image, label = _render(kind, name, shape, rng)
            image = image[0] if kind == "3d" else image  # (z, y, x) stacks; (c, y, x) two-channel images
            counts = np.clip(np.round(image), 0, 65535).astype(np.uint16)
            # the axes go into the TIFF metadata, so that readers need no --axes
            tifffile.imwrite(images / f"{name}_{i:02d}.tif", counts, compression="zlib",
                             metadata={"axes": axes.upper()})
            tifffile.imwrite(labels / f"{name}_{i:02d}.tif", label.astype(np.uint16), compression="zlib",
                             metadata={"axes": axes.replace("c", "").upper()})
        what = "z-stacks (z, y, x)" if kind == "3d" else "2-channel images (c, y, x: nuclei, membrane)"
        (DATA / name / "target.yaml").write_text(f"task: {task}\nsynthetic: true\naxes: {axes}\n")
        (DATA / name / "PROVENANCE.md").write_text(
            f"# {name} (synthetic)\n\nGenerated by `python examples/build_shape_zoo.py --only data` from "
            f"`bioimage_cte.demozoo.synthetic_nd.TARGET_DOMAINS_ND['{name}']` with seed {seed}: {count} {what} of "
            f"{'x'.join(map(str, shape))} uint16 camera counts; instance labels uint16 of the "
            f"{'nuclei (3D)' if kind == '3d' else 'cells'}. The TIFFs record their axes ({axes}); other readers "
            f"may need `--axes {axes}`.\n"
            "Synthetic data, not microscopy. Licence: CC0-1.0 (made by the bioimage-cte project).\n"
        )


def _set_zoo(zoo: Path) -> None:
    global ZOO
    ZOO = zoo


def main() -> None:
    global ZOO, DATA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["models", "data"], help="build only the models or only the data")
    parser.add_argument("--models", nargs="*", help="names of the models to rebuild (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--zoo-dir", type=Path, default=ZOO, help="where the model packages go")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where the targets go")
    args = parser.parse_args()
    ZOO, DATA = args.zoo_dir, args.data_dir
    start = time.perf_counter()
    if args.only != "models":
        build_targets()
        print(f"targets built in {time.perf_counter() - start:.1f} s")
    if args.only != "data":
        chosen = [m for m in MODELS if not args.models or m.name in args.models]
        with ProcessPoolExecutor(max_workers=args.workers, initializer=_set_zoo, initargs=(ZOO,)) as pool:
            for name, seconds in pool.map(build_model, chosen):
                print(f"{name}: {seconds:.1f} s")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
