"""Ranking quality of every label-free estimator on every shipped target (prints a table; not a test).

    python benchmarks/ranking_quality.py [--images 8] [--output benchmarks/results/ranking_quality]

For each labelled target under resources/data, every zoo model is run once over the images and scored by every
estimator from the same clean predictions; each estimator's ranking is compared with the ranking by true
foreground Dice. Two candidate pools are reported:

- task: the models tagged with the target's task (nuclei, cells, mitochondria) -- what a user would rank, and the
  CTE method's assumption (the candidates solve the same task);
- all: every model in the zoo, whatever it was made for.
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

from bioimage_cte.estimators import LABEL_FREE, CTEDropout, CTEInput, make_estimator  # noqa: E402
from bioimage_cte.images import list_images, load_labels  # noqa: E402
from bioimage_cte.ranking import evaluate_rankings, rank_models  # noqa: E402
from bioimage_cte.sources import filter_by_tag, find_models  # noqa: E402
from bioimage_cte.transfer import find_targets, target_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hard(base: type, name: str):
    """The same estimator with the paper's hard score, under its own name so both can run in one pass."""
    cls = dataclasses.make_dataclass(name.replace("-", "_"), [], bases=(base,), frozen=True)
    cls.name = name
    return cls(consistency="hard")


ESTIMATORS = [make_estimator(n) for n in LABEL_FREE] + [hard(CTEDropout, "cte-dropout-hard"),
                                                       hard(CTEInput, "cte-input-hard")]
NAMES = [e.name for e in ESTIMATORS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per target (at most)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ranking_quality")
    args = parser.parse_args()
    estimators = ESTIMATORS
    sources = find_models([ROOT / "resources" / "zoo"])
    report: dict[str, dict] = {}
    start = time.perf_counter()
    for target, folder in find_targets(ROOT / "resources" / "data").items():
        paths = list_images(folder / "images")[: args.images]
        labels = load_labels(paths, folder / "labels")
        results, failures = rank_models(sources, paths, estimators, labels=labels)
        pools = {"all": results}
        task = target_task(folder)
        if task:
            names = {s.name for s in filter_by_tag(sources, task)}
            pools["task"] = [r for r in results if r.source.name in names]
        report[target] = {"task": task, "n_images": len(paths), "failures": [vars(f) for f in failures]}
        for pool, subset in pools.items():
            evaluation = evaluate_rankings(subset, estimators, metric="dice", n_boot=100)
            report[target][pool] = {"n_models": len(subset), "true": evaluation.true,
                                    "agreement": {k: v.to_json_dict() for k, v in evaluation.agreement.items()}}
        print(f"{target}: {len(paths)} images, {time.perf_counter() - start:.0f} s", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    markdown = render(report)
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)


def render(report: dict[str, dict]) -> str:
    lines = []
    for pool, title in (("task", "models of the target's task"), ("all", "all zoo models")):
        targets = [t for t in report if pool in report[t]]
        lines += [f"### Spearman with true Dice, {title}", "",
                  "| estimator | " + " | ".join(f"{t} ({report[t][pool]['n_models']})" for t in targets)
                  + " | mean | min | mean regret |",
                  "|---|" + "---|" * (len(targets) + 3)]
        for name in NAMES:
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
