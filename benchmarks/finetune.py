"""k-shot fine-tuning benchmark on the demo zoo (issue #7; prints a table and the wall time; not a test).

    python benchmarks/finetune.py [--steps 60] [--workers 2] [--targets dsb2018 ...] [--output PATH_STEM]

For each target, the models tagged with the target's task are scored zero-shot with CTE (cte-dropout, all the
target's images, no labels), then each is fine-tuned on k = 1, 5 and all-but-the-test-split labelled images with
the same step budget, next to the same architectures trained from scratch; Dice is measured on 2 held-out images.
Writes ``<output>.json``, ``<output>.md`` (the README table) and ``<output>.html`` (plots and CKA heatmaps).
Targets run in parallel worker processes with one torch thread each. The zero-shot scores and the fine-tuning
share one :class:`~bioimage_cte.run.options.RankOptions` (``--seed``; its code policy decides which architectures may
be built). A smoke run: ``--steps 1 --k 1 --targets nuclei-tiny-crowded --workers 1 --output /tmp/finetune``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("dsb2018", "nuclei-tiny-crowded", "cells-brightfield-large", "em-organelles-noisy")


def run_target(target: str, steps: int, ks: list, seed: int) -> dict:
    """One target end to end in this process: zero-shot CTE, then the fine-tuning benchmark."""
    import torch

    torch.set_num_threads(1)
    from bioimage_cte.demozoo.formats import trained_only
    from bioimage_cte.predict.images import list_images, load_labels, load_target, target_task
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.studies.finetune import FinetuneConfig, run_finetune_benchmark, zero_shot_cte
    from bioimage_cte.zoo.sources import filter_by_tag, find_models

    options = RankOptions(estimator="cte-dropout", seed=seed)
    zero_shot_name = f"CTE (cte-dropout, strength={options.make_estimator().settings()['strength']})"
    folder = ROOT / "resources" / "data" / target
    start, cpu_start = time.perf_counter(), time.process_time()
    paths = list_images(folder / "images")
    labels = load_labels(paths, folder / "labels")
    sources = filter_by_tag(trained_only(find_models([ROOT / "resources" / "zoo"])), target_task(folder) or "")
    zero_shot = zero_shot_cte(sources, paths, options)
    cte_seconds = time.perf_counter() - start
    bench = run_finetune_benchmark([(s.name, s.location) for s in sources], [load_target(p) for p in paths], labels,
                                   ks=ks, n_test=2, config=FinetuneConfig(steps=steps, eval_every=max(steps // 6, 1),
                                                                          seed=seed),
                                   zero_shot=zero_shot, code_policy=options.code_policy())
    payload = bench.to_json_dict()
    payload.update(task=target_task(folder), n_images=len(paths), zero_shot_name=zero_shot_name,
                   seconds={"cte": round(cte_seconds, 1), "total": round(time.perf_counter() - start, 1),
                            # CPU time of this worker: on a shared machine it, not wall time, predicts an idle run
                            "cpu": round(time.process_time() - cpu_start, 1)})
    print(f"{target}: {len(sources)} models, {payload['seconds']['total']:.0f} s wall, "
          f"{payload['seconds']['cpu']:.0f} s CPU", flush=True)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60,
                        help="optimiser steps per model and k (demo zoo: 95 %% of the final Dice after 0-18)")
    parser.add_argument("--k", dest="ks", nargs="+", default=["1", "5", "all"], help="labelled-set sizes")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--workers", type=int, default=2, help="targets run in parallel (one torch thread each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "finetune")
    args = parser.parse_args()
    ks = [k if k == "all" else int(k) for k in args.ks]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {t: pool.submit(run_target, t, args.steps, ks, args.seed) for t in args.targets}
        results = {t: f.result() for t, f in futures.items()}
    wall = time.perf_counter() - start

    from bioimage_cte.studies.finetune_report import finetune_markdown, write_finetune_report

    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "ks": args.ks, "workers": args.workers, "seed": args.seed,
            "wall_seconds": round(wall, 1), "cpu_count": os.cpu_count()}
    args.output.with_suffix(".json").write_text(json.dumps({"meta": meta, "targets": results}, indent=1))
    markdown = (f"Fine-tuning benchmark: {args.steps} steps per model and k, seed {args.seed}, "
                f"{wall / 60:.1f} min wall time on {args.workers} workers.\n\n" + finetune_markdown(results))
    args.output.with_suffix(".md").write_text(markdown)
    write_finetune_report(results, args.output.with_suffix(".html"))
    print(markdown)
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
