"""Adaptive budget (``--budget auto``) replayed on stored per-image values: same top-1 as the full run, images used.

    python benchmarks/quality_values.py --set held-out --images 48 --seeds 0 --families-only   # the CTE values
    python benchmarks/quality_values.py --set held-out --images 48 --clean-only \
        --output benchmarks/results/quality_values_held-out_48_tta.json                      # tta's values
    python benchmarks/budget.py benchmarks/results/quality_values_held-out_48.json [--order-seeds 0 1 2 3 4]
    python benchmarks/budget.py benchmarks/results/quality_values_held-out_48_tta.json

For each target, each estimator's top-1 model on all 48 images is compared with the top-1 after the library's own
stopping rule (:func:`bioimage_cte.run.budget.lead_is_settled` on
:func:`bioimage_cte.run.budget.scores_of`, images in the
order of :func:`bioimage_cte.run.budget.image_order`): a replay, not a second implementation. The per-image values are
those of perturbation seed 0; ``--order-seeds`` replays the image order and the bootstrap with other run seeds on the
same values (a full run with seed s would also redraw the perturbations). Prints ratios: the fraction of targets with
the same top-1, and the mean fraction of the images used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from bioimage_cte.cte.combined import CTECombined, per_image_combined  # noqa: E402
from bioimage_cte.cte.estimators import CTEDihedral, CTEDropout, CTEInput, TTAAgreement  # noqa: E402
from bioimage_cte.run.budget import image_order, lead_is_settled, scores_of, stop_reason  # noqa: E402

FAMILY_KEYS = {"dropout": "dropout@0.2", "dihedral": "dihedral", "noise": "noise@0.1"}
ESTIMATORS = {"tta": (TTAAgreement(), None), "cte": (CTECombined(), None),
              "cte-dihedral": (CTEDihedral(), "dihedral"), "cte-input": (CTEInput(), "noise"),
              "cte-dropout": (CTEDropout(), "dropout")}


def per_image_values(target: dict, names: list[str], name: str, seed: str = "0") -> list[list[float]]:
    """The per-image values the library's ranking would hold for ``names`` (in the full run's image order)."""
    def family(f: str) -> np.ndarray:
        return np.array([target["models"][n]["seeds"][seed][FAMILY_KEYS[f]]["soft"] for n in names], dtype=float)

    if name == "tta":  # no run seed: tta's three transforms are fixed
        return [list(map(float, target["models"][n]["tta"])) for n in names]
    if name == "cte":
        return per_image_combined({f: family(f) for f in FAMILY_KEYS}).tolist()
    return family(ESTIMATORS[name][1]).tolist()


def _measured(target: dict, name: str) -> bool:
    """Whether the values file holds this estimator's per-image values for the target."""
    names = target["pools"]["task"]
    try:
        return bool(np.isfinite(np.array(per_image_values(target, names, name), float)).any())
    except KeyError:
        return False


def fast_scores(values: np.ndarray, how: str):
    """The estimator's aggregate (median or mean of the valid per-image values) over positions, vectorised.

    Equal to :func:`bioimage_cte.run.budget.scores_of` with the estimator (checked on the full run below); the replay
    calls it 200 times per image, where the per-model Python loop of ``scores_of`` is too slow for 48 images.
    """
    reduce = np.nanmedian if how == "median" else np.nanmean

    def score(positions) -> np.ndarray:
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            return reduce(values[:, list(positions)], axis=1)
    return score


def replay(values: list[list[float]], name: str, order_seed: int) -> tuple[int, int, int]:
    """(top-1 of the full run, top-1 when stopped, images used) for one estimator on one target."""
    estimator = ESTIMATORS[name][0]
    n_images = len(values[0])
    full = scores_of(values, estimator, list(range(n_images)))
    how = "mean" if name == "cte" else "median"
    assert np.allclose(fast_scores(np.array(values, float), how)(range(n_images)), full, equal_nan=True)
    order = image_order(n_images, order_seed)
    for n in range(1, n_images + 1):
        seen = np.array([[row[i] for i in order[:n]] for row in values], dtype=float)
        settled = lead_is_settled(fast_scores(seen, how), n, seed=order_seed)
        reason = stop_reason("auto", n, n_images, settled)
        if reason:
            stopped = fast_scores(seen, how)(range(n))
            return int(np.nanargmax(full)), int(np.nanargmax(stopped)), n
    raise AssertionError("the rule never stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("values", type=Path, nargs="+", help="quality_values JSON files (48-image runs)")
    parser.add_argument("--order-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    targets = {}
    for path in args.values:
        targets.update(json.loads(path.read_text())["targets"])
    lines = [f"### Adaptive budget on {len(targets)} targets of {max(t['n_images'] for t in targets.values())} "
             f"images (order seeds {', '.join(map(str, args.order_seeds))}; perturbation seed 0)", "",
             "| estimator | pool | same top-1 as all images | images used (mean fraction) | range over order seeds |",
             "|---|---|---|---|---|"]
    for name in ESTIMATORS:
        if not all(_measured(target, name) for target in targets.values()):
            continue  # e.g. tta in a --families-only run, the families in a --clean-only one
        for pool in ("task", "task+calibration"):
            same, used = [], []
            for seed in args.order_seeds:
                s_same, s_used = [], []
                for target in targets.values():
                    names = target["pools"][pool]
                    full, stopped, n = replay(per_image_values(target, names, name), name, seed)
                    s_same.append(full == stopped)
                    s_used.append(n / target["n_images"])
                same.append(np.mean(s_same))
                used.append(np.mean(s_used))
            lines.append(f"| {name} | {pool} | {np.mean(same):.2f} | {np.mean(used):.2f} | same top-1 "
                         f"{min(same):.2f}–{max(same):.2f}, images {min(used):.2f}–{max(used):.2f} |")
    markdown = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
