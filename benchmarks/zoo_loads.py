"""Model loads and wall time of a zoo run, one task per model against one task per pair, in one run (not a test).

    python benchmarks/zoo_loads.py [--zoo resources/zoo] [--data resources/data] [--order after before]
                                   [--models NAME ...]

Runs ``zoo-rank``'s flow (:func:`bioimage_cte_flows.zoo_ranking.run_zoo_ranking`, default options: ``tta``, each
model in a child process under the default time limit) over the demo zoo and the shipped targets twice, each time
with a fresh results store and output folder, one temporary Prefect server for both:

- after: one task per model, which loads it once and scores every target it fits (``load_once=True``, the default);
- before: one task per model x target pair, each loading its model again (``load_once=False``, the layout before).

It prints, for each, the model loads the run counted (``ZooRunSummary.model_loads``), the pairs scored, and the
wall time, beside the number of models that fit at least one target (what the loads must equal), and checks that
both runs stored the same per-image values for every pair. From the two runs it derives the per-pair costs the
README's scale estimate uses: the cost of one load, and of scoring one pair with its model loaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # speed.children_cpu


def run(zoo: Path, targets: list[Path], work: Path, *, load_once: bool) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (this process and the models' child processes) and summary of one zoo run with a
    fresh store and output folder under ``work``."""
    from speed import children_cpu

    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    name = "after" if load_once else "before"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    how = ZooRunOptions(store_path=str(out / "results.sqlite"), output_dir=str(out), load_once=load_once)
    start, cpu = time.perf_counter(), time.process_time() + children_cpu()
    summary = run_zoo_ranking(zoo, targets, RankOptions(), how)
    return time.perf_counter() - start, time.process_time() + children_cpu() - cpu, summary


def stored(summary) -> dict[str, tuple]:
    """Every pair's stored status and per-image values, by its key (the same in both runs: same packages, images,
    estimator and settings). NaN, an image with nothing to score, is compared as text."""
    from bioimage_cte.run.store import ResultStore

    return {key: (r.status, repr(r.per_image)) for key, r in ResultStore(summary.store).records().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=ROOT / "resources" / "zoo")
    parser.add_argument("--data", type=Path, default=ROOT / "resources" / "data")
    parser.add_argument("--order", nargs="+", default=["after", "before"], choices=["after", "before"])
    parser.add_argument("--models", nargs="+", default=None, help="only these packages of the zoo (names)")
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bioimage_cte.run.jobs import plan_zoo
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.servers import temporary_server

    targets = sorted(p for p in args.data.iterdir() if (p / "images").is_dir())
    if args.models:  # a zoo of these packages only
        subset = Path(tempfile.mkdtemp(prefix="zoo-subset-"))
        for name in args.models:
            shutil.copy(args.zoo / f"{name}.zip", subset)
        args.zoo = subset
    _, jobs, unfit = plan_zoo(str(args.zoo), [str(t) for t in targets], RankOptions())
    fitting = len({j.source.location for j in jobs})
    n_models = len({j.source.name for j in jobs} | {u.model for u in unfit})
    print(f"{args.zoo}: {n_models} models, {len(targets)} targets; {len(jobs)} pairs fit, {len(unfit)} do not; "
          f"{fitting} models fit at least one target", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="zoo-loads-") as tmp, temporary_server() as api, \
            temporary_settings(updates={PREFECT_API_URL: api}):
        for name in args.order:
            wall, cpu, summary = run(args.zoo, targets, Path(tmp), load_once=name == "after")
            runs[name] = (wall, cpu, summary, stored(summary))
            print(f"  {name}: {wall:.0f} s, {summary.model_loads} model loads, {summary.scored} pairs scored, "
                  f"{len(summary.failed)} failed", file=sys.stderr, flush=True)
    print("\n| zoo-rank, fresh store | model loads | pairs scored | failed | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    labels = {"before": "before: one task per model x target (each loads its model)",
              "after": "after: one task per model (loaded once for all its targets)"}
    for name in ("before", "after"):
        if name in runs:
            wall, cpu, summary, _ = runs[name]
            print(f"| {labels[name]} | {summary.model_loads} | {summary.scored} | {len(summary.failed)} | {wall:.0f} "
                  f"| {cpu:.0f} |")
    print(f"\nmodels that fit at least one target: {fitting}")
    if "after" in runs:
        print(f"loads equal that number: {runs['after'][2].model_loads == fitting}")
    if len(runs) == 2:
        (wb, cb, sb, before), (wa, ca, sa, after) = runs["before"], runs["after"]
        same = {k: v for k, v in after.items() if before.get(k) == v}
        print(f"pairs with the same stored status and per-image values in both runs: {len(same)} of {len(after)}")
        print(f"after / before: wall {wa / wb:.2f}, CPU {ca / cb:.2f}")
        saved = sb.model_loads - sa.model_loads
        for what, b, a in (("wall", wb, wa), ("CPU", cb, ca)):
            load = (b - a) / saved if saved else float("nan")
            pair = (a - sa.model_loads * load) / max(sa.scored, 1)
            print(f"per-pair {what} seconds (tta, the targets' 4-8 images): one model load {load:.2f}, one pair "
                  f"scored with its model loaded {pair:.2f}, a pair of the before layout {pair + load:.2f}")


if __name__ == "__main__":
    main()
