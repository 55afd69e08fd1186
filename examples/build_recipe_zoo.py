"""Build the recipe zoo: nuclei models trained by other recipes than the demo zoo's one, deterministically.

    python examples/build_recipe_zoo.py        # resources/zoo-recipes/*.zip (about 25 minutes on 2 cores)

Every demo-zoo model is a small UNet trained by one recipe: random flips and 90-degree rotations, intensity
augmentation, Dice + cross-entropy, 400-500 steps. Geometric consistency then compares like with like, which hid
how a model trained otherwise (``unet2d_nuclei_broad``) fools it. These models vary the recipe -- geometric
augmentation off, a larger network trained longer, another loss (other output calibration), no intensity
augmentation, a short budget, another width and depth -- on the same synthetic nuclei domains, so the ranking
benchmarks can test an estimator against recipes it was not designed on. ``resources/zoo-recipes/README.md`` lists
the recipe of each model.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from bioimage_cte.demozoo.packaging import PackageInfo, build_package
from bioimage_cte.demozoo.synthetic import DOMAINS, render
from bioimage_cte.demozoo.training import Preprocessing, TrainingConfig, train_unet

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo-recipes"
#: the demo zoo's nuclei recipe, which every recipe below departs from in what its name says
BASE = TrainingConfig(features=8, depth=3, steps=500)


@dataclass(frozen=True)
class RecipeModel:
    name: str
    domain: str
    preprocessing: Preprocessing
    config: TrainingConfig
    recipe: str


RECIPES = [
    RecipeModel("recipe-nuclei-no-flips", "nuclei-generic", "zero_mean_unit_variance",
                replace(BASE, geometric=False, seed=101),
                "no flips or 90-degree rotations in training"),
    RecipeModel("recipe-nuclei-dense-no-flips", "nuclei-dense-textured", "scale_range",
                replace(BASE, geometric=False, seed=102),
                "no flips or 90-degree rotations in training"),
    RecipeModel("recipe-nuclei-large-long", "nuclei-generic", "zero_mean_unit_variance",
                replace(BASE, features=16, steps=1200, seed=103),
                "a larger network (16 features at the first level) trained 2.4x longer"),
    RecipeModel("recipe-nuclei-dice-loss", "nuclei-small-bright", "zero_mean_unit_variance",
                replace(BASE, loss="dice", seed=104),
                "Dice loss alone (over-confident probabilities)"),
    RecipeModel("recipe-nuclei-bce-loss", "nuclei-dim-blurry", "scale_range",
                replace(BASE, loss="bce", seed=105),
                "cross-entropy alone (softer probabilities)"),
    RecipeModel("recipe-nuclei-short-plain", "nuclei-touching", "zero_mean_unit_variance",
                replace(BASE, steps=150, augment=False, seed=106),
                "150 steps, no intensity augmentation"),
    RecipeModel("recipe-nuclei-wide-shallow", "nuclei-large-sparse", "scale_range",
                replace(BASE, features=24, depth=2, steps=800, augment=False, seed=107),
                "another network (24 features, depth 2), 800 steps, no intensity augmentation"),
]


def build(model: RecipeModel) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)  # two workers on two cores beat one worker with two threads on tiny convs
    start = time.perf_counter()
    net = train_unet(DOMAINS[model.domain], preprocessing=model.preprocessing, config=model.config)
    test_image, _ = render(DOMAINS[model.domain], (128, 128), rng=1000 + model.config.seed)
    info = PackageInfo(
        name=model.name,
        description=f"Synthetic fluorescent nuclei ({model.domain}); recipe: {model.recipe}.",
        tags=("segmentation", "unet2d", "2d", "pytorch", "bioimage-cte-demo", "nuclei", "fluorescence"),
        documentation=(f"# {model.name}\n\nA bioimage-cte recipe-zoo model: a 2D UNet trained on **synthetic** "
                       f"images of the `{model.domain}` domain, preprocessing `{model.preprocessing}`. Recipe: "
                       f"{model.recipe}.\n"),
        config={"synthetic_training_domain": model.domain, "recipe": model.recipe,
                "training": vars(model.config) | {"pool_shape": [128, 128]}},
    )
    build_package(net, test_image, ZOO / f"{model.name}.zip", info=info, preprocessing=model.preprocessing,
                  outputs="foreground", features=model.config.features, depth=model.config.depth)
    return model.name, time.perf_counter() - start


def main() -> None:
    ZOO.mkdir(parents=True, exist_ok=True)
    # the longest first, so the two workers finish together
    order = sorted(RECIPES, key=lambda m: -m.config.steps * m.config.features ** 2)
    with ProcessPoolExecutor(2) as pool:
        for name, seconds in pool.map(build, order):
            print(f"{name}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
