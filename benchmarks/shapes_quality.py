"""Ranking quality on the zoo's other shapes: the 3D target and the 2-channel target (prints a table; not a test).

    python benchmarks/shapes_quality.py [--images 4] [--seeds 0 1 2 3 4] [--output benchmarks/results/shapes_quality]

For each of the two **synthetic** labelled targets of other shapes (``resources/data/nuclei3d-medium-noisy``:
z-stacks; ``resources/data/cells2ch-medium``: nuclei + membrane channels), the zoo models of the target's task
are run over its images with the axes of its ``target.yaml``, and the default estimator (``cte-dropout``) and TTA
are scored from the same clean predictions. Each ranking is compared with the ranking by true foreground Dice
(Spearman); the summary is the mean over run seeds with the range over seeds. One pass over the models serves all
seeds: each model is loaded and predicted clean once, and scored by one copy of the default estimator per seed
(the same draws as a run with that seed); TTA (flips and rotations) draws nothing at random, so its range is 0.
The candidate pool (``--pool``):

- native (default): the models of the target's task made for its shape (3D input for the 3D target, 2 input
  channels for the 2-channel target);
- task: every model tagged with the target's task (on the 3D target also the 2D nuclei models, run slice by
  slice; on the 2-channel target also the single-channel cell models, fed the channel average). Slow on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")

from bioimage_cte.predict.images import list_images, load_labels, target_task  # noqa: E402
from bioimage_cte.run.evaluation import evaluate_rankings  # noqa: E402
from bioimage_cte.run.options import RankOptions  # noqa: E402
from bioimage_cte.run.ranking import finite  # noqa: E402
from bioimage_cte.run.scoring import rank_models  # noqa: E402
from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml  # noqa: E402
from bioimage_cte.zoo.sources import filter_by_tag, find_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"nuclei3d-medium-noisy": "3d", "cells2ch-medium": "multi-channel"}
ESTIMATORS = ("cte-dropout", "tta")


def target_axes(folder: Path) -> str | None:
    """The ``axes`` of a target's ``target.yaml`` (how its image files are laid out), or None."""
    meta = load_untrusted_yaml((folder / "target.yaml").read_bytes(), where=str(folder / "target.yaml"))
    return str(meta["axes"]) if isinstance(meta, dict) and "axes" in meta else None


def seeded(estimator, seed: int):
    """``estimator`` scoring with run seed ``seed`` whatever seed the run passes, named ``<name>@<seed>``."""
    base = type(estimator)

    def score_image(self, predictor, image, clean, *, seed: int, index: int) -> float:  # noqa: ARG001
        return base.score_image(self, predictor, image, clean, seed=fixed, index=index)

    fixed = seed
    cls = dataclasses.make_dataclass(f"{base.__name__}_seed{seed}", [], bases=(base,), frozen=True,
                                     namespace={"score_image": score_image})
    cls.name = f"{base.name}@{seed}"
    return cls(**{f.name: getattr(estimator, f.name) for f in dataclasses.fields(estimator)})


def evaluate_target(folder: Path, native_tag: str, n_images: int, seeds: list[int], *, pool: str) -> dict:
    """Rank the pool's models on one target for every seed in one pass; Spearman of each estimator with true Dice."""
    task = target_task(folder)
    sources = filter_by_tag(find_models([ROOT / "resources" / "zoo"]), task)
    if pool == "native":
        sources = filter_by_tag(sources, native_tag)
    options = RankOptions(seed=seeds[0], axes=target_axes(folder))
    default = options.make_estimator(ESTIMATORS[0])
    estimators = [seeded(default, s) for s in seeds] + [options.make_estimator(n) for n in ESTIMATORS[1:]]
    paths = list_images(folder / "images")[:n_images]
    labels = load_labels(paths, folder / "labels", axes=options.axes)
    results, failures = rank_models(sources, paths, estimators, options, labels=labels)
    evaluation = evaluate_rankings(results, estimators, metric="dice", n_boot=100, seed=seeds[0])
    rho = {k: v.to_json_dict()["spearman"] for k, v in evaluation.agreement.items()}
    return {"task": task, "pool": pool, "n_images": len(paths), "failures": [vars(f) for f in failures],
            "models": [r.source.name for r in results],
            "true": {r.source.name: evaluation.true[r.source.name]["dice"] for r in results},
            "spearman": {**{f"{default.name}@{s}": rho[f"{default.name}@{s}"] for s in seeds},
                         **{n: rho[n] for n in ESTIMATORS[1:]}},
            "scores": {name: {m.name: finite(m.score) for m in ranking.scores}
                       for name, ranking in evaluation.rankings.items()}}


def summary(reports: dict[str, dict], seeds: list[int]) -> str:
    lines = [f"### Spearman with true Dice on the 3D and 2-channel targets (synthetic): mean over seeds "
             f"{', '.join(map(str, seeds))} (range over seeds)", "",
             "| target | pool (models) | images | " + " | ".join(ESTIMATORS) + " |",
             "|---|---|---|" + "---|" * len(ESTIMATORS)]
    for target, report in reports.items():
        cells = []
        for name in ESTIMATORS:
            keys = [f"{name}@{s}" for s in seeds] if name == ESTIMATORS[0] else [name]
            values = np.array([np.nan if report["spearman"].get(k) is None else report["spearman"][k] for k in keys])
            cells.append("n/a" if np.isnan(values).all() else
                         f"{np.nanmean(values):.2f} ({np.nanmin(values):.2f}–{np.nanmax(values):.2f})")
        lines.append(f"| {target} | {report['pool']} ({len(report['models'])}) | {report['n_images']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images per target (at most)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="run seeds")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="targets under resources/data")
    parser.add_argument("--pool", choices=["native", "task"], default="native", help="candidate models (see above)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_quality",
                        help="output stem (.json and .md)")
    args = parser.parse_args()
    reports: dict[str, dict] = {}
    start = time.perf_counter()
    for target in args.targets:
        reports[target] = evaluate_target(ROOT / "resources" / "data" / target, TARGETS[target], args.images,
                                          args.seeds, pool=args.pool)
        print(f"{target}: {reports[target]['n_images']} images, {time.perf_counter() - start:.0f} s", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(reports, indent=1))
    details = ["", "True Dice and failures:", ""]
    for target, report in reports.items():
        true = ", ".join(f"{m} {d:.3f}" for m, d in sorted(report["true"].items(), key=lambda x: -x[1]))
        details.append(f"- {target}: {true}")
        details += [f"  - failed {f['name']}: {f['reason']}" for f in report["failures"]]
    markdown = summary(reports, args.seeds) + "\n".join(details) + "\n"
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
