"""Rebuild the demo zoo and the synthetic target datasets, deterministically from seeds.

    python examples/build_demo_zoo.py            # models + synthetic targets (about 15 minutes on 2 cores)
    python examples/build_demo_zoo.py --only data
    python examples/build_demo_zoo.py --only formats   # onnx/torchscript/Keras/StarDist variants of built models
    python examples/build_demo_zoo.py --only spec-example   # unet2d-nuclei-broad.zip from resources/spec-examples

Models are written to ``resources/zoo/<name>.zip`` (real bioimageio packages), synthetic targets
to ``resources/data/<target>/{images,labels}/*.tif``. The real DSB2018 target is not rebuilt
here: its tiles are committed (see ``resources/data/dsb2018/PROVENANCE.md``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from skimage.morphology import remove_small_objects

from bioimage_cte.demozoo.packaging import PackageInfo, build_package
from bioimage_cte.demozoo.synthetic import DOMAINS, TARGET_DOMAINS, TARGET_TASKS, render
from bioimage_cte.demozoo.training import Outputs, Preprocessing, TrainingConfig, train_unet

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"
TARGET_IMAGES, TARGET_SHAPE = 8, (256, 256)


def large_objects_only(labels: np.ndarray) -> np.ndarray:
    """The 'mismatched task': learn only nuclei larger than 250 px, as if small ones were debris."""
    return remove_small_objects(labels, max_size=250)


@dataclass(frozen=True)
class ZooModel:
    name: str
    domain: str
    description: str
    preprocessing: Preprocessing
    outputs: Outputs = "foreground"
    features: int = 8
    depth: int = 2
    steps: int = 400
    seed: int = 0
    large_only: bool = False
    tags: tuple[str, ...] = ()


# One architecture per task family, as in the CTE paper's model bank: models of a family differ in the data they
# were trained on, so their consistency is comparable. The tiny model is the deliberate exception.
NUCLEI = {"features": 8, "depth": 3, "steps": 500}
CELLS = {"features": 16, "depth": 2, "steps": 400}
EM = {"features": 8, "depth": 2, "steps": 450}

MODELS = [
    ZooModel("nuclei-small-bright", "nuclei-small-bright", "Small bright fluorescent nuclei, high SNR.",
             "zero_mean_unit_variance", seed=1, tags=("nuclei", "fluorescence"), **NUCLEI),
    ZooModel("nuclei-large-sparse", "nuclei-large-sparse", "Large, sparse, textured fluorescent nuclei.",
             "scale_range", seed=2, tags=("nuclei", "fluorescence"), **NUCLEI),
    ZooModel("nuclei-dim-blurry", "nuclei-dim-blurry", "Dim, blurred nuclei under uneven illumination.",
             "scale_range", seed=3, tags=("nuclei", "fluorescence"), **NUCLEI),
    ZooModel("nuclei-dense-textured", "nuclei-dense-textured", "Dense, touching, textured nuclei.",
             "zero_mean_unit_variance", seed=4, tags=("nuclei", "fluorescence"), **NUCLEI),
    ZooModel("nuclei-versatile", "nuclei-generic", "Fluorescent nuclei of varied size and brightness.",
             "zero_mean_unit_variance", seed=5, tags=("nuclei", "fluorescence"), **NUCLEI),
    ZooModel("nuclei-touching-instance", "nuclei-touching",
             "Touching fluorescent nuclei; foreground and boundary probabilities for watershed instances.",
             "zero_mean_unit_variance", outputs="foreground+boundary", seed=6,
             tags=("nuclei", "fluorescence", "instance-segmentation"), **NUCLEI),
    ZooModel("weak-nuclei-undertrained", "nuclei-generic", "Deliberately weak: stopped after 6 steps.",
             "zero_mean_unit_variance", seed=7, tags=("nuclei", "weak"), **NUCLEI | {"steps": 6}),
    ZooModel("weak-nuclei-large-only", "nuclei-generic",
             "Deliberately mismatched task: segments only nuclei larger than 250 px.",
             "scale_range", seed=8, large_only=True, tags=("nuclei", "weak"), **NUCLEI),
    ZooModel("weak-nuclei-tiny", "nuclei-generic", "Deliberately weak: 2 channels at the first level.",
             "zero_mean_unit_variance", seed=9, tags=("nuclei", "weak"), **NUCLEI | {"features": 2}),
    ZooModel("cells-brightfield", "cells-brightfield", "Brightfield-like cells with dark rims.",
             "zero_mean_unit_variance", seed=10, tags=("cells", "brightfield"), **CELLS),
    ZooModel("cells-brightfield-instance", "cells-touching-brightfield",
             "Touching brightfield-like cells; foreground and boundary probabilities.",
             "scale_range", outputs="foreground+boundary", seed=11,
             tags=("cells", "brightfield", "instance-segmentation"), **CELLS),
    ZooModel("cells-brightfield-small", "cells-brightfield-small", "Small brightfield-like cells, high SNR.",
             "zero_mean_unit_variance", seed=12, tags=("cells", "brightfield"), **CELLS),
    ZooModel("cells-lowcontrast", "cells-lowcontrast-sparse", "Large, sparse, low-contrast blurred cells.",
             "scale_range", seed=13, tags=("cells", "brightfield"), **CELLS),
    ZooModel("em-organelles", "em-organelles", "EM-like organelles (mitochondria) with dark membranes.",
             "zero_mean_unit_variance", seed=14, tags=("mitochondria", "electron-microscopy"), **EM),
    ZooModel("em-vesicles", "em-vesicles", "EM-like small round vesicles.",
             "zero_mean_unit_variance", seed=15, tags=("mitochondria", "electron-microscopy"), **EM),
    ZooModel("em-clean-large", "em-clean-large", "EM-like large organelles at high SNR.",
             "scale_range", seed=16, tags=("mitochondria", "electron-microscopy"), **EM),
    ZooModel("em-organelles-dense", "em-organelles-dense", "EM-like dense, noisy organelles.",
             "zero_mean_unit_variance", seed=17, tags=("mitochondria", "electron-microscopy"), **EM),
]


def build_model(model: ZooModel) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)  # two workers on two cores beat one worker with two threads on tiny convs
    start = time.perf_counter()
    config = TrainingConfig(features=model.features, depth=model.depth, steps=model.steps, seed=model.seed)
    net = train_unet(
        DOMAINS[model.domain],
        preprocessing=model.preprocessing,
        outputs=model.outputs,
        config=config,
        label_filter=large_objects_only if model.large_only else None,
    )
    test_image, _ = render(DOMAINS[model.domain], (128, 128), rng=1000 + model.seed)
    info = PackageInfo(
        name=model.name,
        description=model.description,
        tags=("segmentation", "unet2d", "2d", "pytorch", "bioimage-cte-demo", *model.tags),
        documentation=_readme(model),
        config={"synthetic_training_domain": model.domain, "training": vars(config) | {"pool_shape": [128, 128]}},
    )
    build_package(net, test_image, ZOO / f"{model.name}.zip", info=info, preprocessing=model.preprocessing,
                  outputs=model.outputs, features=model.features, depth=model.depth)
    return model.name, time.perf_counter() - start


def _readme(model: ZooModel) -> str:
    return (
        f"# {model.name}\n\n{model.description}\n\n"
        "A demo model of the bioimage-cte project: a small 2D UNet trained on **synthetic** images "
        f"of the `{model.domain}` domain (`bioimage_cte.demozoo.synthetic.DOMAINS`), preprocessing "
        f"`{model.preprocessing}`, outputs `{model.outputs}` (sigmoid probabilities).\n\n"
        "## Validation\n\nTrue performance on the shipped target datasets is in "
        "`resources/zoo/transfer_matrix.csv` of the bioimage-cte repository.\n"
    )


def build_targets() -> None:
    for t, (name, domain) in enumerate(TARGET_DOMAINS.items()):
        images, labels = DATA / name / "images", DATA / name / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(5000 + t)
        for i in range(TARGET_IMAGES):
            image, label = render(domain, TARGET_SHAPE, rng=rng)
            # Cameras write unsigned integer counts; zlib keeps the repository small.
            counts = np.clip(np.round(image), 0, 65535).astype(np.uint16)
            tifffile.imwrite(images / f"{name}_{i:02d}.tif", counts, compression="zlib")
            tifffile.imwrite(labels / f"{name}_{i:02d}.tif", label.astype(np.uint16), compression="zlib")
        (DATA / name / "target.yaml").write_text(f"task: {TARGET_TASKS[name]}\nsynthetic: true\n")
        (DATA / name / "PROVENANCE.md").write_text(
            f"# {name} (synthetic)\n\nGenerated by `python examples/build_demo_zoo.py --only data` from "
            f"`bioimage_cte.demozoo.synthetic.TARGET_DOMAINS['{name}']` with seed {5000 + t}: {TARGET_IMAGES} images "
            f"of {TARGET_SHAPE[0]}x{TARGET_SHAPE[1]} uint16 camera counts, instance labels uint16.\n"
            "Synthetic data, not microscopy. Licence: CC0-1.0 (made by the bioimage-cte project).\n"
        )


def build_format_variants() -> None:
    """The onnx-only, torchscript-only, own-architecture (+onnx) and, with tensorflow, Keras and StarDist packages."""
    import importlib.util

    from bioimage_cte.demozoo.formats import build_format_variants as build
    from bioimage_cte.demozoo.stardist import build_stardist_package

    paths = build(ZOO)
    if importlib.util.find_spec("tensorflow") is not None:
        paths.append(build_stardist_package(ZOO))
    for path in paths:
        print(f"{path.name}: exported")


def build_spec_example() -> None:
    """The spec's unet2d_nuclei_broad (trained by others) as unet2d-nuclei-broad.zip: nothing is trained."""
    from bioimage_cte.demozoo.spec_example import SPEC_EXAMPLE_NAME
    from bioimage_cte.demozoo.spec_example import build_spec_example as build

    path = build(ZOO.parent / "spec-examples", ZOO / f"{SPEC_EXAMPLE_NAME}.zip")
    print(f"{path.name}: packaged from the specification's example")


def _set_zoo(zoo: Path) -> None:
    global ZOO
    ZOO = zoo  # worker processes do not see main()'s arguments


def main() -> None:
    global ZOO, DATA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["models", "data", "formats", "spec-example"],
                        help="build only the models, the data, the format variants (from the built models), or the "
                             "package of the specification's unet2d_nuclei_broad")
    parser.add_argument("--models", nargs="*", help="names of the models to rebuild (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--zoo-dir", type=Path, default=ZOO, help="where the model packages go")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where the synthetic targets go")
    args = parser.parse_args()
    ZOO, DATA = args.zoo_dir, args.data_dir
    start = time.perf_counter()
    if args.only == "spec-example":
        build_spec_example()
        return
    if args.only not in ("models", "formats"):
        build_targets()
        print(f"targets built in {time.perf_counter() - start:.1f} s")
    if args.only not in ("data", "formats"):
        chosen = [m for m in MODELS if not args.models or m.name in args.models]
        with ProcessPoolExecutor(max_workers=args.workers, initializer=_set_zoo, initargs=(ZOO,)) as pool:
            for name, seconds in pool.map(build_model, chosen):
                print(f"{name}: {seconds:.1f} s")
    if args.only != "data":
        build_format_variants()
        build_spec_example()
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
