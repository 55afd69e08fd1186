"""Ranking quality of every label-free estimator on three target sets (prints a table; not a test).

    python benchmarks/quality_values.py --set shipped          # per-image values (models run once), ~x min
    python benchmarks/quality_values.py --set held-out
    python benchmarks/quality_values.py --set new-held-out     # run once, after the design was frozen
    python benchmarks/ranking_quality.py [--sets shipped held-out new-held-out] [--per-target]
                                         [--output benchmarks/results/ranking_quality.md]

Three target sets, each ranked among the models of the target's task (what a user would rank, and the CTE method's
assumption), with and without the calibration twins of :mod:`calibration_variants` (a weak model made over-confident
and a good one made under-confident, same masks; pool ``task+calibration``):

- ``shipped``: the labelled targets under resources/data (8 images each; 4 for DSB2018);
- ``held-out``: 14 synthetic targets drawn at random (:func:`bioimage_cte.demozoo.synthetic.random_domain`, seed
  :data:`HELD_OUT_SEED`, 6 images each); with the shipped ones, the development set of issue #13;
- ``new-held-out``: 20 more, drawn from :data:`NEW_HELD_OUT_SEED` before issue #13's design work began, 8 images
  each, and evaluated once after that design was frozen.

Every estimator is derived from the per-image values of :mod:`quality_values` with the library's own functions
(:func:`bioimage_cte.cte.combined.combine`, :func:`bioimage_cte.run.strength.choose_strength`), so no model runs
twice for
two estimators. Each figure is the mean over the run seeds (default 0-4) with its range over seeds.
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

from bioimage_cte.demozoo.synthetic import STYLE_TASKS, random_domain, render_many  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


HELD_OUT_SEED = 20261122
HELD_OUT_STYLES = ("fluorescence",) * 8 + ("brightfield",) * 3 + ("em",) * 3

#: The second held-out set (issue #13), defined before any of that issue's design work and run once, after the
#: design was frozen: 20 targets, 10 fluorescence : 5 brightfield : 5 EM, 8 images each, from a seed never used
#: before. Nothing was developed or chosen on it.
NEW_HELD_OUT_SEED = 20261202
NEW_HELD_OUT_STYLES = ("fluorescence",) * 10 + ("brightfield",) * 5 + ("em",) * 5
NEW_HELD_OUT_IMAGES = 8
#: Issue #25's fresh held-out set: drawn from a seed never used before, written before the design of the recipe-
#: robust default and evaluated once after it was frozen, with unet2d_nuclei_broad among the nuclei candidates.
#: Nuclei only (the published model is a nuclei model), 6 targets of 6 images.
FRESH_SEED = 20261207
FRESH_STYLES = ("fluorescence",) * 6
FRESH_IMAGES = 6
#: Issue #25's recipe held-out set: the same kind of nuclei targets from another seed never used before, written
#: after the default was frozen and before the recipe zoo (resources/zoo-recipes) was first run on anything; looked
#: at once, with unet2d_nuclei_broad and the recipe zoo among the candidates.
RECIPE_SEED = 20261208
#: Issue #25's second recipe held-out set (protocol's second iteration): the same kind of targets, another new seed.
RECIPE_SEED_2 = 20261209
#: ... and the third, larger one (20 targets), declared after the first two left the bars unresolved.
RECIPE_SEED_3 = 20261210
#: ... and a fourth (20 targets), declared for the third iteration of the protocol before it was drawn.
RECIPE_SEED_4 = 20261211
#: ... and a fifth (20 targets), for the fourth iteration.
RECIPE_SEED_5 = 20261212
#: ... and a sixth (20 targets): a confirmation of the fourth iteration's choice.
RECIPE_SEED_6 = 20261213
RECIPE_3_STYLES = ("fluorescence",) * 20


def write_held_out_targets(n: int, root: Path, *, new: bool = False, n_images: int | None = None,
                           fresh: bool = False, recipe: int = 0) -> dict[str, tuple[Path, str]]:
    """Render ``n`` randomly drawn targets (images/ and labels/ as tif) under ``root``; name -> (folder, task).

    ``new`` draws from the second held-out set (:data:`NEW_HELD_OUT_SEED`, 8 images each) instead of the first
    (:data:`HELD_OUT_SEED`, 6 images each); ``n_images`` renders more images per target (the budget benchmark's
    48-image versions), the first ones being independent draws of the same domain.
    """
    import tifffile

    seed, styles, prefix = ((NEW_HELD_OUT_SEED, NEW_HELD_OUT_STYLES, "new-held-out") if new
                            else (HELD_OUT_SEED, HELD_OUT_STYLES, "held-out"))
    if fresh:
        seed, styles, prefix, new = FRESH_SEED, FRESH_STYLES, "fresh-held-out", True
    if recipe:  # 1, 2 or 3: the recipe held-out sets
        seed, prefix = {1: (RECIPE_SEED, "recipe-held-out"), 2: (RECIPE_SEED_2, "recipe-held-out-2"),
                        3: (RECIPE_SEED_3, "recipe-held-out-3"), 4: (RECIPE_SEED_4, "recipe-held-out-4"),
                        5: (RECIPE_SEED_5, "recipe-held-out-5"), 6: (RECIPE_SEED_6, "recipe-held-out-6")}[recipe]
        styles = RECIPE_3_STYLES if recipe >= 3 else FRESH_STYLES
        new, fresh = True, True
    n_images = n_images or (FRESH_IMAGES if fresh else NEW_HELD_OUT_IMAGES if new else 6)
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


# ---------------------------------------------------------------------------------------------------------------
# Estimators as functions of the stored per-image values: (target, model names, seed) -> one score per model.

from scipy import stats  # noqa: E402

from bioimage_cte.cte.combined import combine, per_image_combined  # noqa: E402
from bioimage_cte.cte.seeds import rng  # noqa: E402
from bioimage_cte.run.budget import image_order  # noqa: E402
from bioimage_cte.run.strength import CHOICE_IMAGES, STRENGTH_GRIDS, choose_strength  # noqa: E402

DEFAULT_STRENGTH = {"dropout": 0.2, "noise": 0.1}


def _median_rows(rows) -> np.ndarray:
    out = []
    for row in rows:
        v = np.asarray(row, dtype=float)
        out.append(float(np.nanmedian(v)) if np.isfinite(v).any() else np.nan)
    return np.array(out)


def family_values(target: dict, names: list[str], seed: int, family: str, strength: float | None, kind: str,
                  what: str | None = None) -> np.ndarray:
    """``values[m][i]``: model m's per-image consistency (``kind``) under one family and strength."""
    key = family if strength is None else f"{family}@{strength:g}"
    return np.array([target["models"][n]["seeds"][str(seed)][key][what or kind] for n in names], dtype=float)


def auto_strength(target: dict, names: list[str], seed: int, family: str, kind: str) -> float:
    """The library's choice for one family, from the first :data:`CHOICE_IMAGES` images of the run's order."""
    subset = image_order(target["n_images"], seed)[:CHOICE_IMAGES]
    cons, keep = {}, {}
    for s in STRENGTH_GRIDS[family]:
        cons[s] = _median_rows(family_values(target, names, seed, family, s, kind)[:, subset])
        keep[s] = _median_rows(family_values(target, names, seed, family, s, kind, "keep")[:, subset])
    return choose_strength(cons, keep)


def family_score(target, names, seed, family: str, kind: str, strength: str = "fixed") -> np.ndarray:
    """One family alone: median consistency over images at the fixed or the automatically chosen strength."""
    if family == "dihedral":
        s = None
    elif strength == "auto":
        s = auto_strength(target, names, seed, family, kind)
    else:
        s = DEFAULT_STRENGTH[family]
    return _median_rows(family_values(target, names, seed, family, s, kind))


def combined_score(target, names, seed, kind: str = "soft", strength: str = "fixed",
                   families=("dropout", "dihedral", "noise"), how: str = "rank") -> np.ndarray:
    scores = {f: family_score(target, names, seed, f, kind, strength) for f in families}
    if how == "rank":
        return combine(scores)
    z = []
    for v in scores.values():
        sd = np.nanstd(v)
        z.append((v - np.nanmean(v)) / sd if sd > 0 else np.zeros_like(v))
    return np.nanmean(z, axis=0)


def image_combined_score(target, names, seed, kind: str = "soft", families=("dropout", "dihedral", "noise")
                         ) -> np.ndarray:
    """``cte`` as the library scores it: mean over images of the per-image mean of family ranks."""
    per = {f: family_values(target, names, seed, f, None if f == "dihedral" else DEFAULT_STRENGTH[f], kind)
           for f in families}
    values = per_image_combined(per)
    return np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in values])


def clean_score(what: str):
    return lambda target, names, seed, pool: _median_rows([target["models"][n][what] for n in names])


ESTIMATORS = {
    # baselines (seed-independent except random)
    "tta (the new default)": clean_score("tta"),
    "consensus": lambda t, names, seed, pool: _median_rows([t["consensus"][pool][n] for n in names]),
    "confidence": clean_score("confidence"),
    "entropy": clean_score("entropy"),
    "random": lambda t, names, seed, pool: np.array([rng(seed, "random", model=n).random() for n in names]),
    # each CTE family alone
    "cte-dropout (soft, p=0.2)": lambda t, n, s, p: family_score(t, n, s, "dropout", "soft"),
    "cte-dropout (soft, auto)": lambda t, n, s, p: family_score(t, n, s, "dropout", "soft", "auto"),
    "cte-dropout (hard, p=0.2)": lambda t, n, s, p: family_score(t, n, s, "dropout", "hard"),
    "cte-input (soft, 0.1)": lambda t, n, s, p: family_score(t, n, s, "noise", "soft"),
    "cte-input (soft, auto)": lambda t, n, s, p: family_score(t, n, s, "noise", "soft", "auto"),
    "cte-input (hard, 0.1)": lambda t, n, s, p: family_score(t, n, s, "noise", "hard"),
    "cte-dihedral (soft)": lambda t, n, s, p: family_score(t, n, s, "dihedral", "soft"),
    "cte-dihedral (hard)": lambda t, n, s, p: family_score(t, n, s, "dihedral", "hard"),
    # combined
    "cte variant: soft, ranks of medians": lambda t, n, s, p: combined_score(t, n, s, "soft"),
    "cte (soft, automatic strength)": lambda t, n, s, p: combined_score(t, n, s, "soft", "auto"),
    "cte variant: hard, ranks of medians": lambda t, n, s, p: combined_score(t, n, s, "hard"),
    "cte (hard, automatic strength)": lambda t, n, s, p: combined_score(t, n, s, "hard", "auto"),
    "cte variant: soft, z-scores of medians": lambda t, n, s, p: combined_score(t, n, s, "soft", how="z"),
    "cte (the library's: soft, per-image ranks)": lambda t, n, s, p: image_combined_score(t, n, s, "soft"),
    "cte (hard, per-image ranks)": lambda t, n, s, p: image_combined_score(t, n, s, "hard"),
    "cte without dropout (what a black-box model gets)": lambda t, n, s, p: combined_score(
        t, n, s, "soft", families=("dihedral", "noise")),
}


def agreement(scores: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    """Spearman, Kendall (unscored models last) and regret of the estimated top-1."""
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    if np.ptp(true) == 0 or np.all(filled == filled[0]):
        rho = tau = np.nan
    else:
        finite_fill = np.where(np.isfinite(filled), filled, np.nanmin(scores[np.isfinite(scores)]) - 1
                               if np.isfinite(scores).any() else 0.0)
        rho = float(stats.spearmanr(finite_fill, true).statistic)
        tau = float(stats.kendalltau(finite_fill, true).statistic)
    return rho, tau, float(true.max() - true[int(np.argmax(filled))])


def evaluate(values: dict, pool: str, names_of=ESTIMATORS) -> dict:
    """``result[estimator][seed][target] = (spearman, kendall, regret, n_models)``."""
    out: dict = {e: {} for e in names_of}
    for seed in values["seeds"]:
        for t, target in values["targets"].items():
            names = target["pools"][pool]
            true = np.array([np.nanmean(target["models"][n]["true"]) for n in names])
            for e, fn in names_of.items():
                out[e].setdefault(seed, {})[t] = (*agreement(np.asarray(fn(target, names, seed, pool), float), true),
                                                  len(names))
    return out


def per_seed_stats(per_target: dict) -> tuple[float, float, float, float, float]:
    """Mean and min Spearman, mean Kendall, mean regret and candidate-weighted mean Spearman over targets."""
    a = np.array(list(per_target.values()), dtype=float)
    rho, tau, regret, n = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    ok = np.isfinite(rho)
    return (float(np.nanmean(rho)), float(np.nanmin(rho)), float(np.nanmean(tau)), float(np.nanmean(regret)),
            float(np.sum(rho[ok] * n[ok]) / np.sum(n[ok])))


def table(result: dict, title: str) -> str:
    lines = [f"### {title}", "",
             "| estimator | mean Spearman | min Spearman | mean Kendall | mean regret | weighted mean Spearman |",
             "|---|---|---|---|---|---|"]
    for e, seeds in result.items():
        per_seed = np.array([per_seed_stats(seeds[s]) for s in sorted(seeds)])
        cells = []
        for k, (m, lo, hi) in enumerate(zip(per_seed.mean(0), per_seed.min(0), per_seed.max(0), strict=True)):
            f = ".3f" if k == 3 else ".2f"
            cells.append(f"{m:{f}}" if hi - lo < (0.0005 if k == 3 else 0.005) else f"{m:{f}} ({lo:{f}}–{hi:{f}})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_target_table(result: dict, title: str) -> str:
    seeds = sorted(next(iter(result.values())))
    targets = list(result[next(iter(result))][seeds[0]])
    lines = [f"### {title}: Spearman per target, mean over seeds", "",
             "| estimator | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for e, by_seed in result.items():
        lines.append(f"| {e} | " + " | ".join(
            f"{np.nanmean([by_seed[s][t][0] for s in seeds]):.2f}" for t in targets) + " |")
    return "\n".join(lines) + "\n"


SET_TITLES = {"shipped": "shipped targets", "held-out": "old held-out (14 targets, seed 20261122)",
              "new-held-out": "new held-out (20 targets, seed 20261202)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["new-held-out", "held-out", "shipped"],
                        choices=list(SET_TITLES))
    parser.add_argument("--values", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of quality_values_<set>.json")
    parser.add_argument("--per-target", action="store_true", help="also print Spearman per target")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    parts = []
    for which in args.sets:
        path = args.values / f"quality_values_{which}.json"
        if not path.exists():
            parts.append(f"### {SET_TITLES[which]}: not measured ({path.name} missing)\n")
            continue
        values = json.loads(path.read_text())
        seeds = ", ".join(map(str, values["seeds"]))
        # the automatic strength needs the grid passes (quality_values.py --grid); without them it is not reported
        names_of = ESTIMATORS if values.get("grid") else {k: v for k, v in ESTIMATORS.items() if "auto" not in k}
        for pool in ("task", "task+calibration"):
            result = evaluate(values, pool, names_of)
            title = f"{SET_TITLES[which]}, pool {pool}: mean over seeds {seeds} (range over seeds)"
            parts.append(table(result, title))
            if args.per_target:
                parts.append(per_target_table(result, f"{SET_TITLES[which]}, pool {pool}"))
    markdown = "\n".join(parts)
    if args.output:
        args.output.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
