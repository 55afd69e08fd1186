"""Speed of CTE, as ratios measured in one run (prints a table; not a test).

    python benchmarks/speed.py [--models 8] [--images 10]

Three ways to get what CTE feature-dropout needs (a clean and a perturbed prediction of every image by every
model), each timed end to end including model loading:

- cte: :func:`bioimage_cte.run.scoring.rank_models` with ``cte-dropout`` from one
  :class:`~bioimage_cte.run.options.RankOptions`
  (one bioimageio pipeline per model, the model's own pre/postprocessing, consistency scoring);
- bare: the torch network loaded once per model, the same normalisation and padding by hand, and the two forward
  passes per image (the same dropout masks, from :func:`bioimage_cte.cte.seeds.draw_seed`) -- the floor any
  implementation pays;
- naive: ``bioimageio.core.predict`` once per image and pass (it reloads the model on every call).

``--models 1 --images 1`` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bioimageio.core import predict  # noqa: E402
from bioimageio.core.backends.pytorch_backend import load_torch_model  # noqa: E402

from bioimage_cte.cte.perturbations import InputPerturbation, perturb_image  # noqa: E402
from bioimage_cte.cte.seeds import draw_seed, rng  # noqa: E402
from bioimage_cte.demozoo.training import normalize  # noqa: E402
from bioimage_cte.predict.images import list_images, load_target  # noqa: E402
from bioimage_cte.predict.tiling import spatial_spec, valid_size  # noqa: E402
from bioimage_cte.run.options import RankOptions  # noqa: E402
from bioimage_cte.run.scoring import rank_models  # noqa: E402
from bioimage_cte.zoo.models import load_model  # noqa: E402
from bioimage_cte.zoo.sources import find_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bare(sources, paths, options: RankOptions) -> float:
    """Hand-written torch loop: load net, normalise, pad, two forwards per image (dropout via a hook)."""
    rate = options.make_estimator("cte-dropout").strength
    start = time.perf_counter()
    for source in sources:
        descr = load_model(source.location, perform_io_checks=False)
        net = load_torch_model(descr.weights.pytorch_state_dict, devices=["cpu"]).eval()
        method = next(op.id for op in descr.inputs[0].preprocessing if op.id != "ensure_dtype")
        spec = spatial_spec(descr, "y")
        mask = {}

        def hook(module, args, out, mask=mask):
            return out * mask["m"] if "m" in mask else None

        net.bottleneck.register_forward_hook(hook)
        for i, path in enumerate(paths):
            image = load_target(path)
            size = valid_size(image.shape[0], spec), valid_size(image.shape[1], spec)
            pad = [(0, size[0] - image.shape[0]), (0, size[1] - image.shape[1])]
            x = torch.from_numpy(normalize(np.pad(image, pad, mode="reflect"), method=method)[None, None])
            with torch.no_grad():
                torch.sigmoid(net(x))
                gen = torch.Generator().manual_seed(draw_seed(options.seed, "feature-dropout", image=i))
                keep = torch.rand(net.bottleneck[-2].num_features, generator=gen) >= rate
                mask["m"] = (keep.float() / (1.0 - rate)).view(1, -1, 1, 1)
                torch.sigmoid(net(x))
                mask.clear()
    return time.perf_counter() - start


def naive(sources, paths, options: RankOptions) -> float:
    """``bioimageio.core.predict`` per image and pass: the pipeline is rebuilt on every call."""
    start = time.perf_counter()
    for source in sources:
        descr = load_model(source.location, perform_io_checks=False)
        input_id = str(descr.inputs[0].id)
        for i, path in enumerate(paths):
            image = load_target(path)
            noise = rng(options.seed, "input-gaussian", image=i)  # the draw cte-input makes
            for x in (image, perturb_image(image, InputPerturbation("gaussian", 0.1), rng=noise)):
                predict(model=descr, inputs={input_id: x[None, None]})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = RankOptions(estimator="cte-dropout", seed=args.seed)
    estimators = [options.make_estimator()]
    sources = find_models([ROOT / "resources" / "zoo"])[: args.models]
    data = ROOT / "resources" / "data"
    paths = (list_images(data / "dsb2018" / "images") + list_images(data / "nuclei-medium-noisy" / "images"))
    paths = paths[: args.images]
    rank_models(sources[:1], paths[:1], estimators, options)  # warm-up: imports, first torch call
    start = time.perf_counter()
    results, failures = rank_models(sources, paths, estimators, options)
    cte = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} models failed: {failures[0].name}: {failures[0].reason}")
    t_bare = bare(sources, paths, options)
    t_naive = naive(sources, paths, options)
    print(f"{len(sources)} models x {len(paths)} images, 2 predictions each (clean + perturbed)")
    print(f"  CTE (bioimage-cte rank)        {cte:7.1f} s")
    print(f"  bare torch forward passes      {t_bare:7.1f} s")
    print(f"  naive bioimageio.core.predict  {t_naive:7.1f} s")
    print(f"  CTE / bare  = {cte / t_bare:.2f}x   (target <= 1.5x)")
    print(f"  naive / CTE = {t_naive / cte:.2f}x   (target >= 3x)")


if __name__ == "__main__":
    main()
