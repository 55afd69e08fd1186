"""Ranking quality of every label-free estimator on every shipped target (prints a table; not a test).

    python benchmarks/ranking_quality.py [--images 8] [--seeds 0 1 2 3 4] [--output benchmarks/results/ranking_quality]

For each labelled target under resources/data, every zoo model is run once over the images and scored by every
estimator from the same clean predictions; each estimator's ranking is compared with the ranking by true
foreground Dice. Two candidate pools are reported:

- task: the models tagged with the target's task (nuclei, cells, mitochondria) -- what a user would rank, and the
  CTE method's assumption (the candidates solve the same task);
- all: every model in the zoo, whatever it was made for.

``--held-out N`` instead ranks on N synthetic targets whose domains are drawn at random
(:func:`bioimage_cte.demozoo.synthetic.random_domain`, 8 fluorescence : 3 brightfield : 3 EM, fixed seed, 6 images
each). They are never shipped and no default was tuned on them, so they are the check that a choice made
while looking at the shipped targets (such as the soft consistency score) holds elsewhere.

Every estimator is configured by one :class:`~bioimage_cte.options.RankOptions` (``--seed``; default strengths), plus
``cte-dropout-hard`` and ``cte-input-hard``, the same options with the paper's hard score. A smoke run:
``--held-out 1 --images 1 --seeds 0 1 --output /tmp/rq``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")

from bioimage_cte.demozoo.synthetic import STYLE_TASKS, random_domain, render_many  # noqa: E402
from bioimage_cte.estimators import LABEL_FREE, CTEDropout, CTEInput, Estimator  # noqa: E402
from bioimage_cte.evaluation import evaluate_rankings  # noqa: E402
from bioimage_cte.images import list_images, load_labels, target_task  # noqa: E402
from bioimage_cte.options import RankOptions  # noqa: E402
from bioimage_cte.scoring import rank_models  # noqa: E402
from bioimage_cte.sources import filter_by_tag, find_models  # noqa: E402
from bioimage_cte.studies.transfer import find_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hard(base: type, name: str, options: RankOptions) -> Estimator:
    """The estimator of ``options`` with the paper's hard score, under its own name so both run in one pass."""
    cls = dataclasses.make_dataclass(name.replace("-", "_"), [], bases=(base,), frozen=True)
    cls.name = name
    return cls.from_options(options.replace(consistency="hard"))


def make_estimators(options: RankOptions) -> list[Estimator]:
    """Every label-free estimator configured by ``options``, then the two CTE estimators with the hard score."""
    return [options.make_estimator(n) for n in LABEL_FREE] + [hard(CTEDropout, "cte-dropout-hard", options),
                                                             hard(CTEInput, "cte-input-hard", options)]


HELD_OUT_SEED = 20261122
HELD_OUT_STYLES = ("fluorescence",) * 8 + ("brightfield",) * 3 + ("em",) * 3

#: The second held-out set (issue #13), defined before any of that issue's design work and run once, after the
#: design was frozen: 20 targets, 10 fluorescence : 5 brightfield : 5 EM, 8 images each, from a seed never used
#: before. Nothing was developed or chosen on it.
NEW_HELD_OUT_SEED = 20261202
NEW_HELD_OUT_STYLES = ("fluorescence",) * 10 + ("brightfield",) * 5 + ("em",) * 5
NEW_HELD_OUT_IMAGES = 8


def write_held_out_targets(n: int, root: Path, *, new: bool = False, n_images: int | None = None
                           ) -> dict[str, tuple[Path, str]]:
    """Render ``n`` randomly drawn targets (images/ and labels/ as tif) under ``root``; name -> (folder, task).

    ``new`` draws from the second held-out set (:data:`NEW_HELD_OUT_SEED`, 8 images each) instead of the first
    (:data:`HELD_OUT_SEED`, 6 images each); ``n_images`` renders more images per target (the budget benchmark's
    48-image versions), the first ones being independent draws of the same domain.
    """
    import tifffile

    seed, styles, prefix = ((NEW_HELD_OUT_SEED, NEW_HELD_OUT_STYLES, "new-held-out") if new
                            else (HELD_OUT_SEED, HELD_OUT_STYLES, "held-out"))
    n_images = n_images or (NEW_HELD_OUT_IMAGES if new else 6)
    rng = np.random.default_rng(seed)
    targets = {}
    for i in range(n):
        style = styles[i % len(styles)]
        domain = random_domain(style, rng)
        # the new set's image draws come from its own seed too, never from the old set's 1000 + i
        image_rng = np.random.default_rng([seed, i]) if new else 1000 + i
        images, labels = render_many(domain, n_images, (256, 256), rng=image_rng)
        name = f"{prefix}-{i:02d}-{STYLE_TASKS[style]}"
        for sub, stack in (("images", np.clip(images, 0, 65535)), ("labels", labels)):
            (root / name / sub).mkdir(parents=True, exist_ok=True)
            for k, plane in enumerate(stack):
                tifffile.imwrite(root / name / sub / f"{name}_{k:02d}.tif", plane.astype(np.uint16))
        targets[name] = (root / name, STYLE_TASKS[style])
    return targets


def evaluate_target(sources, folder: Path, task: str | None, n_images: int, options: RankOptions, *,
                    task_only: bool = False) -> dict:
    """Rank every model on one labelled target; agreement of each estimator with true Dice per candidate pool."""
    estimators = make_estimators(options)
    if task_only and task:
        sources = filter_by_tag(sources, task)
    paths = list_images(folder / "images")[:n_images]
    labels = load_labels(paths, folder / "labels")
    results, failures = rank_models(sources, paths, estimators, options, labels=labels)
    pools = {} if task_only else {"all": results}
    if task:
        names = {s.name for s in filter_by_tag(sources, task)}
        pools["task"] = [r for r in results if r.source.name in names]
    report = {"task": task, "n_images": len(paths), "failures": [vars(f) for f in failures]}
    for pool, subset in pools.items():
        evaluation = evaluate_rankings(subset, estimators, metric="dice", n_boot=100, seed=options.seed)
        report[pool] = {"n_models": len(subset), "true": evaluation.true,
                        "agreement": {k: v.to_json_dict() for k, v in evaluation.agreement.items()}}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per target (at most)")
    parser.add_argument("--held-out", type=int, default=0, metavar="N",
                        help="rank on N randomly drawn synthetic targets instead of the shipped ones")
    parser.add_argument("--held-out-new", action="store_true",
                        help=f"rank on the second held-out set ({len(NEW_HELD_OUT_STYLES)} targets, seed "
                             f"{NEW_HELD_OUT_SEED}, {NEW_HELD_OUT_IMAGES} images each); run once, after the design "
                             "was frozen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="run seeds (dropout masks, noise, bootstrap); the summary is the mean over them with its "
                             "range")
    parser.add_argument("--output", type=Path, default=None,
                        help="output stem (default benchmarks/results/ranking_quality[_held_out])")
    args = parser.parse_args()
    stem = ("ranking_quality_new_held_out" if args.held_out_new else
            "ranking_quality_held_out" if args.held_out else "ranking_quality")
    output = args.output or ROOT / "benchmarks" / "results" / stem
    sources = find_models([ROOT / "resources" / "zoo"])
    reports: dict[int, dict[str, dict]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.held_out_new:
            targets = write_held_out_targets(len(NEW_HELD_OUT_STYLES), Path(tmp), new=True)
        elif args.held_out:  # the task pool only: the all-models pool is reported for the shipped targets
            targets = write_held_out_targets(args.held_out, Path(tmp))
        else:
            targets = {t: (f, target_task(f)) for t, f in find_targets(ROOT / "resources" / "data").items()}
        for seed in args.seeds:
            options = RankOptions(seed=seed)
            reports[seed] = {}
            for target, (folder, task) in targets.items():
                reports[seed][target] = evaluate_target(sources, folder, task, args.images, options,
                                                        task_only=bool(args.held_out or args.held_out_new))
                print(f"seed {seed}, {target}: {reports[seed][target]['n_images']} images, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({str(s): r for s, r in reports.items()}, indent=1))
    names = [e.name for e in make_estimators(RankOptions())]
    markdown = summary(reports, names) + "\n" + render(reports[args.seeds[0]], names, seed=args.seeds[0])
    output.with_suffix(".md").write_text(markdown)
    print(markdown)


def _pool_stats(report: dict[str, dict], name: str, pool: str) -> tuple[float, float, float, float]:
    """Mean and min Spearman, mean Kendall and mean regret of one estimator over the targets of one run."""
    targets = [t for t in report if pool in report[t]]
    stats = [report[t][pool]["agreement"].get(name, {}) for t in targets]
    values = {k: np.array([np.nan if s.get(k) is None else s[k] for s in stats], dtype=float)
              for k in ("spearman", "kendall", "regret")}
    return (float(np.nanmean(values["spearman"])), float(np.nanmin(values["spearman"])),
            float(np.nanmean(values["kendall"])), float(np.nanmean(values["regret"])))


def summary(reports: dict[int, dict[str, dict]], names: list[str], pool: str = "task") -> str:
    """Each estimator over all seeds: mean of the per-seed figures, and the range over seeds in brackets."""
    seeds = sorted(reports)
    lines = [f"### Models of the target's task: mean over seeds {', '.join(map(str, seeds))} (range over seeds)", "",
             "| estimator | mean Spearman | min Spearman | mean Kendall | mean regret |", "|---|---|---|---|---|"]
    for name in names:
        per_seed = np.array([_pool_stats(reports[s], name, pool) for s in seeds])
        cells = [f"{m:.2f} ({lo:.2f}–{hi:.2f})" if k < 3 else f"{m:.3f} ({lo:.3f}–{hi:.3f})"
                 for k, (m, lo, hi) in enumerate(zip(per_seed.mean(0), per_seed.min(0), per_seed.max(0), strict=True))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(report: dict[str, dict], names: list[str], *, seed: int) -> str:
    lines = []
    for pool, title in (("task", "models of the target's task"), ("all", "all zoo models")):
        targets = [t for t in report if pool in report[t]]
        if not targets:
            continue
        lines += [f"### Spearman with true Dice, {title} (seed {seed})", "",
                  "| estimator | " + " | ".join(f"{t} ({report[t][pool]['n_models']})" for t in targets)
                  + " | mean | min | mean regret |",
                  "|---|" + "---|" * (len(targets) + 3)]
        for name in names:
            rho = [report[t][pool]["agreement"].get(name, {}).get("spearman") for t in targets]
            regret = [report[t][pool]["agreement"].get(name, {}).get("regret") for t in targets]
            values = [np.nan if r is None else r for r in rho]
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {np.nanmean(values):.2f} | {np.nanmin(values):.2f}"
                         + f" | {np.nanmean([np.nan if r is None else r for r in regret]):.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
