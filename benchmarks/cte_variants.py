"""Which CTE feature-dropout variant ranks best: perturbed layer, score, repeats, aggregation (prints a table).

    python benchmarks/cte_variants.py [--held-out 14] [--seed 0] [--output benchmarks/results/cte_variants]
    python benchmarks/cte_variants.py --smoke     # one held-out target, one image; writes to a temporary folder

The defaults of ``cte-dropout`` (bottleneck, soft score, one dropout mask per image, median over
images) are the paper's, except the soft score. This benchmark checks each choice against its
alternatives on both target sets, held-out targets first (they were never tuned on):

- layer: every block of the demo zoo's UNets, named by its distance from the bottleneck (``encoder-1`` is the
  deepest encoder block, whose output feeds both the bottleneck and the deepest skip connection; ``decoder-1``
  the first decoder block after it), since the zoo's UNets have 2 or 3 levels;
- draws: one dropout mask per image is what ``cte-dropout`` uses; each layer is scored with 6 independent
  draws to show how much one draw moves the result, and with the consistency of all 6 averaged per image
  (``repeats=6``). Draw r on image i is ``CTEDropout.perturbed_prediction(..., seed=seed, index=i, repeat=r)``,
  whose mask seed is ``draw_seed(seed, "feature-dropout", image=i, repeat=r)`` (:mod:`bioimage_cte.cte.seeds`): draw 0
  is what ``rank --seed <seed>`` uses, and draws 0 to r-1 are what ``--repeats r`` averages;
- score: soft (effective invariance) or hard (IoU of the thresholded masks);
- aggregation over images: median (the paper's) or mean.

Each (target, model) is predicted once clean and once per (layer, mask); every variant is scored
from those predictions. Spearman is against true foreground Dice over the models of the target's
task, as in ``ranking_quality.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

os.environ.setdefault("TQDM_DISABLE", "1")

from ranking_quality import write_held_out_targets  # noqa: E402

from bioimage_cte.cte.consistency import hard_consistency, soft_consistency  # noqa: E402
from bioimage_cte.cte.estimators import CTEDropout  # noqa: E402
from bioimage_cte.cte.metrics import foreground_dice  # noqa: E402
from bioimage_cte.demozoo.archs.unet import UNet2d  # noqa: E402
from bioimage_cte.demozoo.formats import trained_only  # noqa: E402
from bioimage_cte.predict.factory import make_predictor  # noqa: E402
from bioimage_cte.predict.images import list_images, load_labels, load_target, target_task  # noqa: E402
from bioimage_cte.run.options import RankOptions  # noqa: E402
from bioimage_cte.studies.transfer import find_targets  # noqa: E402
from bioimage_cte.zoo.models import load_model
from bioimage_cte.zoo.sources import filter_by_tag, find_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPEATS = (1, 3, 6)
SCORES = {"soft": soft_consistency, "hard": hard_consistency}


def unet_layers(descr) -> dict[str, str]:
    """Position relative to the bottleneck -> module name, for a demo-zoo UNet."""
    kwargs = dict(descr.weights.pytorch_state_dict.architecture.kwargs)
    depth = len(UNet2d(**kwargs).encoders)
    layers = {f"encoder-{depth - i}": f"encoders.{i}" for i in range(depth)}
    layers["bottleneck"] = "bottleneck"
    layers.update({f"decoder-{i + 1}": f"decoders.{i}" for i in range(depth)})  # decoders.0 is the deepest
    return layers


def score_model(location: str, paths: list[Path], labels: list[np.ndarray], options: RankOptions) -> dict:
    """True Dice and every variant's per-image consistency of one model on one target."""
    estimator = options.make_estimator("cte-dropout")
    assert isinstance(estimator, CTEDropout)
    descr = load_model(location)
    layers = unet_layers(descr)
    per_image: dict[str, list[list[float]]] = {}  # variant key -> per image -> per mask
    dice = []
    for position, layer in layers.items():
        with make_predictor(descr, name=location, greybox=True, layer=layer, devices=[options.device],
                            code_policy=options.code_policy()) as predictor:
            for i, path in enumerate(paths):
                image = load_target(path, axes=options.axes)
                clean = predictor.predict(image)
                if len(dice) <= i:  # once per image, from the first layer's clean pass
                    dice.append(foreground_dice(clean.foreground, labels[i]))
                for r in range(max(REPEATS)):  # the draws cte-dropout makes (run seed, image i, repeat r)
                    perturbed = estimator.perturbed_prediction(predictor, image, seed=options.seed, index=i,
                                                               repeat=r).foreground
                    for score, fn in SCORES.items():
                        values = per_image.setdefault(f"{position}|{score}", [[] for _ in paths])
                        values[i].append(round(fn(clean.foreground, perturbed), 5))
    return {"dice": float(np.mean(dice)), "per_image": per_image}


def spearman(models: dict[str, dict], layer: str, score: str, masks: slice, how: str) -> float:
    """Spearman of one variant with true Dice: per image the mean consistency over ``masks``, then ``how``."""
    key = f"{layer}|{score}"
    names = [m for m in models if key in models[m]["per_image"]]
    if len(names) < 3:
        return float("nan")
    estimate = []
    for name in names:
        per_image = np.array([np.nanmean(v[masks]) if np.isfinite(v[masks]).any() else np.nan
                              for v in models[name]["per_image"][key]])
        estimate.append(np.nanmedian(per_image) if how == "median" else np.nanmean(per_image))
    return float(spearmanr(estimate, [models[m]["dice"] for m in names]).statistic)


def _order(position: str) -> tuple[int, int]:
    """encoder-3, encoder-2, encoder-1, bottleneck, decoder-1, ...: input to output."""
    if position == "bottleneck":
        return (1, 0)
    kind, distance = position.split("-")
    return (0, -int(distance)) if kind == "encoder" else (2, int(distance))


def render(report: dict[str, dict[str, dict]], title: str) -> str:
    targets = list(report)
    draws = max(REPEATS)
    positions = sorted({k.split("|")[0] for t in report.values() for m in t.values() for k in m["per_image"]},
                       key=_order)
    lines = [f"### {title}: Spearman with true Dice, models of the target's task", "",
             "Soft score, median over images. Per target: mean ρ over the 6 single-mask draws. Then the mean and",
             "min over targets, the range of the mean over targets across the 6 draws, and the mean and min when",
             "the 6 masks' consistency is averaged per image.", "",
             "| layer | " + " | ".join(targets) + " | mean | min | mean per draw | 6 masks: mean / min |",
             "|---|" + "---|" * (len(targets) + 4)]
    for position in positions:
        rho = np.array([[spearman(report[t], position, "soft", slice(r, r + 1), "median") for t in targets]
                        for r in range(draws)])
        averaged = np.array([spearman(report[t], position, "soft", slice(draws), "median") for t in targets])
        with warnings.catch_warnings():  # a layer the 2-level UNets lack is nan on their targets
            warnings.simplefilter("ignore", RuntimeWarning)
            per_target = np.nanmean(rho, axis=0)
        per_draw = np.nanmean(rho, axis=1)
        name = "**bottleneck** (default)" if position == "bottleneck" else position
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in per_target)
                     + f" | {np.nanmean(per_target):.2f} | {np.nanmin(per_target):.2f}"
                     + f" | {per_draw.min():.2f} to {per_draw.max():.2f}"
                     + f" | {np.nanmean(averaged):.2f} / {np.nanmin(averaged):.2f} |")
    lines += ["", "At the bottleneck: score, masks per image (the first 1, 3 or 6 draws averaged), aggregation.", "",
              "| score | masks | over images | " + " | ".join(targets) + " | mean | min |",
              "|---|---|---|" + "---|" * (len(targets) + 2)]
    for score in SCORES:
        for repeats in REPEATS:
            for how in ("median", "mean"):
                rho = np.array([spearman(report[t], "bottleneck", score, slice(repeats), how) for t in targets])
                lines.append(f"| {score} | {repeats} | {how} | " + " | ".join(f"{v:.2f}" for v in rho)
                             + f" | {np.nanmean(rho):.2f} | {np.nanmin(rho):.2f} |")
    return "\n".join(lines + [""])


def run(targets: dict[str, tuple[Path, str]], n_images: int, sources, start: float,
        options: RankOptions) -> dict[str, dict]:
    report = {}
    for target, (folder, task) in targets.items():
        paths = list_images(folder / "images")[:n_images]
        labels = load_labels(paths, folder / "labels")
        report[target] = {s.name: score_model(s.location, paths, labels, options)
                          for s in filter_by_tag(sources, task)}
        print(f"{target}: {time.perf_counter() - start:.0f} s", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=14, metavar="N", help="randomly drawn synthetic targets")
    parser.add_argument("--images", type=int, default=8, help="images per shipped target (at most)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cte_variants",
                        help="output stem (.md and .json)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed, as 'rank --seed'")
    parser.add_argument("--render", action="store_true", help="only re-render the tables from the output's .json")
    parser.add_argument("--smoke", action="store_true",
                        help="one held-out target, one image, no shipped target; output to a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "cte_variants" if args.smoke else args.output
        if args.render:
            report = json.loads(output.with_suffix(".json").read_text())
        else:
            report = measure(args.held_out, args.images, RankOptions(seed=args.seed), smoke=args.smoke)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.with_suffix(".json").write_text(json.dumps(report))
        sections = [render(report[k], title) for k, title in
                    (("held_out", f"{len(report['held_out'])} held-out targets"), ("shipped", "shipped targets"))
                    if report[k]]
        markdown = "\n".join([*sections, f"{report.get('seconds', '?')} s on this machine.", ""])
        output.with_suffix(".md").write_text(markdown)
    print(markdown)


def measure(n_held_out: int, n_images: int, options: RankOptions, *, smoke: bool = False) -> dict:
    """Every variant on the held-out targets (6 images each) and then on the shipped ones (``smoke``: 1, 1, none)."""
    sources = trained_only(find_models([ROOT / "resources" / "zoo"]))  # a format variant is its source again
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        held_out = run(write_held_out_targets(1 if smoke else n_held_out, Path(tmp)), 1 if smoke else 6, sources,
                       start, options)
    shipped = {} if smoke else run(
        {t: (f, target_task(f)) for t, f in find_targets(ROOT / "resources" / "data").items()}, n_images, sources,
        start, options)
    return {"held_out": held_out, "shipped": shipped, "seed": options.seed,
            "seconds": round(time.perf_counter() - start)}


if __name__ == "__main__":
    main()
