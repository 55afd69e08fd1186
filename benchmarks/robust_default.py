"""Issue #25: a default robust to the training recipe, with unet2d_nuclei_broad among the candidates.

    python benchmarks/quality_values.py --set shipped --task nuclei --skip-families dropout noise \\
        --extra-model DIR/unet2d-nuclei-broad.zip --output benchmarks/results/quality_values_shipped_nuclei_broad.json
    (same for --set held-out and, once the choice was frozen, --set fresh-held-out; with the recipe zoo:
    --extra-model resources/zoo-recipes/*.zip --save-arrays DIR, suffix _recipes, --set recipe-held-out[-2..-6]
    each once its iteration's candidate was frozen, then python benchmarks/boundary.py VALUES.json DIR)
    python benchmarks/robust_default.py [--fresh] [--recipes-fresh] [--fresh-4] [--fresh-5] [--fresh-6]
                                        [--output benchmarks/results/robust_default.md]

The candidates and the rule that picks one are declared in benchmarks/results/robust_default_protocol.md, written
before any of them was computed with nuclei_broad. Every figure: pool "task" (the target's task's demo models, plus
nuclei_broad in the *_nuclei_broad files), mean over seeds 0-4 (range where a draw is involved), per target
Spearman, Kendall and the regret of the top-1 (true Dice), then the mean (and the minimum Spearman) over targets.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranking_quality import _median_rows, agreement, family_score  # noqa: E402

from bioimage_cte.cte.calibration import load_calibration  # noqa: E402
from bioimage_cte.cte.combined import combine, per_image_combined  # noqa: E402
from bioimage_cte.cte.seeds import rng  # noqa: E402
from bioimage_cte.run.ranking import near_constant  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEV = {"shipped": "quality_values_shipped.json", "held-out": "quality_values_held-out.json",
       "new-held-out": "quality_values_new-held-out.json",
       "shipped nuclei + broad": "quality_values_shipped_nuclei_broad.json",
       "held-out nuclei + broad": "quality_values_held-out_nuclei_broad.json",
       "shipped nuclei + broad + recipes": "quality_values_shipped_recipes.json",
       "held-out nuclei + broad + recipes": "quality_values_held-out_recipes.json"}
FRESH = {"fresh held-out nuclei + broad": "quality_values_fresh-held-out_nuclei_broad.json"}
RECIPES_FRESH = {"recipe held-out + broad + recipes": "quality_values_recipe-held-out_recipes.json",
                 "recipe held-out 2 + broad + recipes": "quality_values_recipe-held-out-2_recipes.json",
                 "recipe held-out 3 (20 targets) + broad + recipes": "quality_values_recipe-held-out-3_recipes.json"}
#: the groups with the boundary measures that were development data in the third iteration (44 targets)
DEV_BOUNDARY = {"shipped nuclei + broad + recipes": "quality_values_shipped_recipes.json",
                "held-out nuclei + broad + recipes": "quality_values_held-out_recipes.json",
                **RECIPES_FRESH}
RECIPES_FRESH_4 = {"recipe held-out 4 (20 targets) + broad + recipes": "quality_values_recipe-held-out-4_recipes.json"}
RECIPES_FRESH_5 = {"recipe held-out 5 (20 targets) + broad + recipes": "quality_values_recipe-held-out-5_recipes.json"}
RECIPES_FRESH_6 = {"recipe held-out 6 (20 targets) + broad + recipes": "quality_values_recipe-held-out-6_recipes.json"}
#: the fourth iteration's development groups (64 targets)
DEV_H = {**DEV_BOUNDARY, **RECIPES_FRESH_4}
DEFAULT = "D' per-image predicted Dice, median + guard"
POOL = "task"


def _clean(t, names, what):
    return _median_rows([t["models"][n][what] for n in names])


def _consensus(t, names):
    return _median_rows([t["consensus"][POOL][n] for n in names])


def _guard(t, names, scores):
    """Near-constant models after every other (the library's rule, bioimage_cte.run.ranking.near_constant)."""
    fg = _clean(t, names, "foreground")
    out = np.asarray(scores, dtype=float).copy()
    flagged = np.array([near_constant(f) for f in fg])
    out[flagged] -= 10.0
    return out


def _tta_consensus_per_image(t, names):
    per = {"tta": np.array([t["models"][n]["tta"] for n in names], float),
           "consensus": np.array([t["consensus"][POOL][n] for n in names], float)}
    values = np.where(np.isfinite(per["tta"]), per_image_combined(per), np.nan)  # as the library: tta-empty stays
    return np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in values])


def _predicted(t, names):
    fit = load_calibration().fits[0]
    assert fit.features == ("tta", "consensus")
    return np.array([fit.estimate({"tta": a, "consensus": b}) for a, b in
                     zip(_clean(t, names, "tta"), _consensus(t, names), strict=True)])


def _predicted_per_image(t, names, fit=None):
    """D's library form: each image's predicted Dice from its own tta and consensus (with ``fit``, default the shipped
    calibration's), the median over images."""
    fit = fit or load_calibration().fits[0]
    w_tta, w_consensus = fit.weights
    per = fit.intercept + w_tta * np.array([t["models"][n]["tta"] for n in names], float) + w_consensus * np.array(
        [t["consensus"][POOL][n] for n in names], float)
    return _median_rows(np.clip(per, 0.0, 1.0))


def _recipe_rows() -> list:
    """Calibration rows of the two recipe development groups: every model of the 18-model pools (true Dice from the
    run's labels), each target under its own name (so leave-one-target-out holds both versions out together)."""
    from bioimage_cte.cte.calibration import CalibrationRow

    rows = []
    for file in ("quality_values_shipped_recipes.json", "quality_values_held-out_recipes.json"):
        values = json.loads((RESULTS / file).read_text())
        for target, t in values["targets"].items():
            names = t["pools"][POOL]
            for name, a, b, f in zip(names, _clean(t, names, "tta"), _consensus(t, names),
                                     _clean(t, names, "foreground"), strict=True):
                rows.append(CalibrationRow(target, name, t["task"], {"tta": a, "consensus": b, "foreground": f},
                                           float(np.nanmean(t["models"][name]["true"]))))
    return rows


def refitted_calibration():
    """Candidate F's calibration: the shipped one's 270 pairs plus the recipe development groups, refitted."""
    from bioimage_cte.cte.calibration import fit_calibration
    from bioimage_cte.studies.calibration import calibration_rows, read_signals

    cal = ROOT / "resources" / "calibration"
    shipped = calibration_rows(read_signals(cal / "signals.csv"), [ROOT / "resources" / "zoo" / "transfer_matrix.csv",
                                                                   cal / "transfer_matrix_held_out.csv"])
    return fit_calibration(shipped + _recipe_rows())


@functools.cache
def _refitted_fit():
    return refitted_calibration().fits[0]


SINGLE = {
    "tta": lambda t, n, s: _clean(t, n, "tta"),
    "consensus": lambda t, n, s: _consensus(t, n),
    "cte-dihedral (hard)": lambda t, n, s: family_score(t, n, s, "dihedral", "hard"),
    "cte-dihedral (soft)": lambda t, n, s: family_score(t, n, s, "dihedral", "soft"),
    "confidence": lambda t, n, s: _clean(t, n, "confidence"),
    "entropy": lambda t, n, s: _clean(t, n, "entropy"),
    "random": lambda t, n, s: np.array([rng(s, "random", model=m).random() for m in n]),
}
CANDIDATES = {
    "A tta + guard": lambda t, n, s: _guard(t, n, _clean(t, n, "tta")),
    "B consensus + guard": lambda t, n, s: _guard(t, n, _consensus(t, n)),
    "C rank mean {tta, consensus} per image + guard": lambda t, n, s: _guard(t, n, _tta_consensus_per_image(t, n)),
    "D predicted Dice + guard": lambda t, n, s: _guard(t, n, _predicted(t, n)),
    "E rank mean of medians {tta, consensus} + guard": lambda t, n, s: _guard(
        t, n, combine({"tta": _clean(t, n, "tta"), "consensus": _consensus(t, n)})),
}
#: D as the library computes it (per image, then the median), added after the development results: see the protocol
LIBRARY_FORMS = {
    "D' per-image predicted Dice, median + guard": lambda t, n, s: _guard(t, n, _predicted_per_image(t, n)),
    "F D' with the calibration refitted on several recipes": lambda t, n, s: _guard(
        t, n, _predicted_per_image(t, n, _refitted_fit()))}


#: candidate G's weights (intercept, tta, consensus, edge, peak), frozen in the protocol's third iteration
G_WEIGHTS = (-0.063, 0.117, 0.864, 0.124, 0.209)
G_FEATURES = ("tta", "consensus", "edge", "peak")
G = "G tta + consensus + edge + boundary peak + guard"


def _per_image(t, names, what) -> np.ndarray:
    rows = [t["consensus"][POOL][n] if what == "consensus" else t["models"][n][what] for n in names]
    return np.array(rows, float)


def _g_score(t, names, weights=G_WEIGHTS):
    """G: each image's linear estimate from tta, consensus and the two boundary measures, clipped, the median."""
    per = weights[0] + sum(w * _per_image(t, names, f) for w, f in zip(weights[1:], G_FEATURES, strict=True))
    return _median_rows(np.clip(per, 0.0, 1.0))


#: on the values files with the boundary measures (benchmarks/boundary.py): the third iteration
BOUNDARY = {
    "edge": lambda t, n, s: _clean(t, n, "edge"),
    "boundary peak": lambda t, n, s: _clean(t, n, "peak"),
    G: lambda t, n, s: _guard(t, n, _g_score(t, n)),
}


#: candidate H's weights (tta, consensus, edge, peak: of the medians over images), frozen in the fourth iteration
H_WEIGHTS = (0.503, 1.0, 0.876, 0.740)
H = "H listwise tta + consensus + edge + boundary peak + guard"
BOUNDARY[H] = lambda t, n, s: _guard(t, n, _h_score(t, n))


def _medians(t, names) -> np.ndarray:
    """Per model, the medians over images of G_FEATURES (nan as -1: no boundary ranks low)."""
    return np.nan_to_num(np.column_stack([_median_rows(_per_image(t, names, f)) for f in G_FEATURES]), nan=-1.0)


def _h_score(t, names, weights=H_WEIGHTS):
    return _medians(t, names) @ np.asarray(weights)


def _expected_regret(w, data, ridge):
    """Mean over targets of the regret expected when the top model is drawn with probabilities softmax(scores)."""
    total = 0.0
    for x, true in data:
        s = x @ w
        p = np.exp(s - s.max())
        total += (p / p.sum()) @ (true.max() - true)
    return total / len(data) + ridge * float(w @ w)


def fit_h(data: list[tuple[np.ndarray, np.ndarray]], ridge: float = 1e-4) -> np.ndarray:
    """H's weights: the linear score of the medians that minimises the expected regret (a listwise objective), from
    two starts (all ones; consensus alone)."""
    from scipy import optimize

    starts = (np.ones(len(G_FEATURES)) * 10, np.eye(len(G_FEATURES))[G_FEATURES.index("consensus")] * 50)
    fits = [optimize.minimize(_expected_regret, w0, args=(data, ridge), method="L-BFGS-B") for w0 in starts]
    return min(fits, key=lambda r: r.fun).x


def fit_g(groups: list[str]) -> str:
    """G's weights refitted (least squares on per-(target, model) medians) over ``groups``' targets, and its
    leave-one-target-out Spearman and regret beside D''s: the check of the numbers the protocol froze."""
    data = []  # (group, X, true)
    for group in groups:
        values = json.loads((RESULTS / DEV_BOUNDARY[group]).read_text())
        for t in values["targets"].values():
            names = t["pools"][POOL]
            x = np.column_stack([np.ones(len(names))] + [_median_rows(_per_image(t, names, f)) for f in G_FEATURES])
            data.append((group, x, np.array([np.nanmean(t["models"][n]["true"]) for n in names]), t, names))
    weights = np.linalg.lstsq(np.vstack([d[1] for d in data]), np.concatenate([d[2] for d in data]), rcond=None)[0]
    loto: dict[str, dict[str, list]] = {}
    for k, (group, _x, true, t, names) in enumerate(data):
        rest = [d for j, d in enumerate(data) if j != k]
        w = np.linalg.lstsq(np.vstack([d[1] for d in rest]), np.concatenate([d[2] for d in rest]), rcond=None)[0]
        for e, scores in (("G", _g_score(t, names, w)), ("D'", _predicted_per_image(t, names))):
            loto.setdefault(e, {}).setdefault(group, []).append(agreement(_guard(t, names, scores), true))
    lines = [f"### G's weights over the {len(data)} development targets: " + ", ".join(
        f"{n} {w:.3f}" for n, w in zip(("intercept", *G_FEATURES), weights, strict=True)), "",
        "| leave one target out | mean Spearman (mean over groups) | mean regret |", "|---|---|---|"]
    for e, by_group in loto.items():
        rho = np.mean([np.mean([r[0] for r in v]) for v in by_group.values()])
        regret = np.mean([np.mean([r[2] for r in v]) for v in by_group.values()])
        lines.append(f"| {e} | {rho:.3f} | {regret:.4f} |")
    return "\n".join(lines) + "\n"


def h_check(groups: dict[str, str]) -> str:
    """H's weights refitted over ``groups``' targets (scaled to consensus 1), and its leave-one-target-out Spearman
    and regret per group beside D''s: the check of the numbers the protocol's fourth iteration froze."""
    data = []  # (group, target, names, medians, true)
    for group, file in groups.items():
        for t in json.loads((RESULTS / file).read_text())["targets"].values():
            names = t["pools"][POOL]
            data.append((group, t, names, _medians(t, names),
                         np.array([np.nanmean(t["models"][n]["true"]) for n in names])))
    weights = fit_h([(d[3], d[4]) for d in data])
    loto: dict[str, dict[str, list]] = {"H": {}, "D'": {}}
    for k, (group, t, names, x, true) in enumerate(data):
        w = fit_h([(d[3], d[4]) for j, d in enumerate(data) if j != k])
        for e, scores in (("H", x @ w), ("D'", _predicted_per_image(t, names))):
            loto[e].setdefault(group, []).append(agreement(_guard(t, names, scores), true))
    lines = [f"### H's weights over the {len(data)} development targets (consensus 1): " + ", ".join(
        f"{n} {w / weights[1]:.3f}" for n, w in zip(G_FEATURES, weights, strict=True)), "",
        "| leave one target out | " + " | ".join(groups) + " | mean over groups |",
        "|---|" + "---|" * (len(groups) + 1)]
    for e, by_group in loto.items():
        cells = [(np.mean([r[0] for r in v]), np.mean([r[2] for r in v])) for v in by_group.values()]
        lines.append(f"| {e} ρ / regret | " + " | ".join(f"{a:.3f} / {b:.4f}" for a, b in cells) +
                     f" | {np.mean([c[0] for c in cells]):.3f} / {np.mean([c[1] for c in cells]):.4f} |")
    return "\n".join(lines) + "\n"


def evaluate(values: dict, estimators: dict) -> dict:
    """``out[estimator][seed][target] = (spearman, kendall, regret, top model, its median foreground)``."""
    out: dict = {e: {} for e in estimators}
    for seed in values["seeds"]:
        for name, t in values["targets"].items():
            names = t["pools"][POOL]
            true = np.array([np.nanmean(t["models"][m]["true"]) for m in names])
            fg = _clean(t, names, "foreground")
            for e, fn in estimators.items():
                scores = np.asarray(fn(t, names, seed), float)
                rho, tau, regret = agreement(scores, true)
                top = int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))
                out[e].setdefault(seed, {})[name] = (rho, tau, regret, names[top], float(fg[top]))
    return out


def summary(result: dict) -> dict:
    """Per estimator: (mean, min, max over seeds) of mean Spearman, min Spearman, mean Kendall, mean regret."""
    out = {}
    for e, by_seed in result.items():
        rows = []
        for per_target in by_seed.values():
            a = np.array([v[:3] for v in per_target.values()], float)
            rows.append((np.nanmean(a[:, 0]), np.nanmin(a[:, 0]), np.nanmean(a[:, 1]), np.nanmean(a[:, 2])))
        r = np.array(rows)
        out[e] = (r.mean(0), r.min(0), r.max(0))
    return out


def table(title: str, stats: dict) -> str:
    lines = [f"### {title}", "", "| estimator | mean Spearman | min Spearman | mean Kendall | mean regret |",
             "|---|---|---|---|---|"]
    for e, (m, lo, hi) in stats.items():
        cells = []
        for k in range(4):
            f = ".3f"
            cells.append(f"{m[k]:{f}}" if hi[k] - lo[k] < 0.0005 else f"{m[k]:{f}} ({lo[k]:{f}}-{hi[k]:{f}})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_target(title: str, result: dict, names: list[str]) -> str:
    first = next(iter(result[names[0]].values()))
    lines = [f"#### {title}: per target (seed 0): Spearman / regret / the model ranked first", "",
             "| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for target in first:
        cells = []
        for e in names:
            rho, _tau, regret, top, fg = next(iter(result[e].values()))[target]
            cells.append(f"{rho:.2f} / {regret:.3f} / {top} ({fg:.0%} fg)")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def calibration_check(title: str, values: dict, default: str) -> str:
    """The shipped predicted-Dice calibration, unchanged, on ``values``: MAE for the model ``default`` ranks first
    and for every model, coverage of the 90 % intervals, beside the trivial predictor (the fit's mean Dice)."""
    from bioimage_cte.studies.calibration import calibration_rows, read_signals

    cal_dir = ROOT / "resources" / "calibration"
    fitted = calibration_rows(read_signals(cal_dir / "signals.csv"),
                              [ROOT / "resources" / "zoo" / "transfer_matrix.csv",
                               cal_dir / "transfer_matrix_held_out.csv"])
    trivial = float(np.mean([r.dice for r in fitted]))
    cal = load_calibration()
    rows = []  # (is top, |error|, covered, |trivial error|)
    for t in values["targets"].values():
        names = t["pools"][POOL]
        top = int(np.nanargmax({**CANDIDATES, **LIBRARY_FORMS, **BOUNDARY}[default](t, names, values["seeds"][0])))
        for i, (model, a, b, f) in enumerate(zip(names, _clean(t, names, "tta"), _consensus(t, names),
                                                 _clean(t, names, "foreground"), strict=True)):
            p = cal.predict({"tta": a, "consensus": b, "foreground": f}, task=t["task"])
            true = float(np.nanmean(t["models"][model]["true"]))
            rows.append((i == top, abs(p.estimate - true), p.interval[0] <= true <= p.interval[1], abs(trivial - true)))
    r = np.array(rows, dtype=float)
    top = r[r[:, 0] == 1]
    return "\n".join([
        f"#### {title}: the shipped predicted_dice calibration (fitted on demo-zoo models only), unchanged", "",
        "| | pairs | MAE | 90 % interval coverage | trivial predictor's MAE |", "|---|---|---|---|---|",
        f"| model ranked first by {default.split()[0]} | {len(top)} | {top[:, 1].mean():.3f} | "
        f"{top[:, 2].mean():.1%} | {top[:, 3].mean():.3f} |",
        f"| all models | {len(r)} | {r[:, 1].mean():.3f} | {r[:, 2].mean():.1%} | {r[:, 3].mean():.3f} |", ""])


def difference(results: dict[str, dict], first: str, second: str) -> str:
    """Per set and pooled: ``first``'s and ``second``'s mean Spearman and regret (seed 0: neither draws), and the
    95 % bootstrap interval over targets of ``first``'s Spearman minus ``second``'s."""
    lines = [f"### {first} against {second}", "",
             "| set | targets | first ρ / regret | second ρ / regret | ρ difference (95 % interval) |",
             "|---|---|---|---|---|"]
    pooled: list[tuple] = []
    for group, result in [*results.items(), ("all these sets pooled", None)]:
        rows = pooled if result is None else [(result[first][0][t], result[second][0][t]) for t in result[first][0]]
        if result is not None:
            pooled.extend(rows)
        if result is None and len(results) == 1:
            break
        a = np.array([[d[0], d[2], c[0], c[2]] for d, c in rows], float)
        diff = a[:, 0] - a[:, 2]
        boot = np.random.default_rng(0).choice(diff, (10000, len(diff))).mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        lines.append(f"| {group} | {len(rows)} | {a[:, 0].mean():.3f} / {a[:, 1].mean():.4f} | {a[:, 2].mean():.3f} / "
                     f"{a[:, 3].mean():.4f} | {diff.mean():+.4f} ({lo:+.4f} to {hi:+.4f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="also the fresh held-out set (after the choice)")
    parser.add_argument("--recipes-fresh", action="store_true",
                        help="also the recipe held-out set (after the choice on the recipe groups)")
    parser.add_argument("--fresh-4", action="store_true",
                        help="also recipe held-out 4 (after the third iteration's candidate was frozen)")
    parser.add_argument("--fresh-5", action="store_true",
                        help="also recipe held-out 5 (after the fourth iteration's candidate was frozen)")
    parser.add_argument("--fresh-6", action="store_true", help="also recipe held-out 6 (H's confirmation set)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    groups = {**DEV, **(FRESH if args.fresh else {}), **(RECIPES_FRESH if args.recipes_fresh else {}),
              **(RECIPES_FRESH_4 if args.fresh_4 else {}), **(RECIPES_FRESH_5 if args.fresh_5 else {}),
              **(RECIPES_FRESH_6 if args.fresh_6 else {})}
    parts, means, fresh_results = [], {}, {}
    for group, file in groups.items():
        path = RESULTS / file
        if not path.exists():
            parts.append(f"### {group}: not measured ({file} missing)\n")
            continue
        values = json.loads(path.read_text())
        boundary = all("edge" in m for t in values["targets"].values() for m in t["models"].values())
        result = evaluate(values, {**SINGLE, **CANDIDATES, **LIBRARY_FORMS, **(BOUNDARY if boundary else {})})
        if group in {**RECIPES_FRESH, **RECIPES_FRESH_4, **RECIPES_FRESH_5, **RECIPES_FRESH_6}:
            fresh_results[group] = result
        stats = summary(result)
        means[group] = {e: s[0] for e, s in stats.items()}
        parts.append(table(f"{group} ({len(values['targets'])} targets, seeds "
                           f"{', '.join(map(str, values['seeds']))})", stats))
        if "broad" in group:
            parts.append(per_target(group, result, ["tta", "consensus", "cte-dihedral (hard)", *CANDIDATES,
                                                    *LIBRARY_FORMS]))
        if "recipes" in group:  # set 5 was judged for H, the nuclei default since
            parts.append(calibration_check(group, values, H if group in {**RECIPES_FRESH_5, **RECIPES_FRESH_6}
                                           else DEFAULT))
    dev = [g for g in DEV if g in means]
    lines = ["### the frozen rule on the development groups", "",
             "| candidate | mean Spearman over dev groups | mean regret, broad dev groups |", "|---|---|---|"]
    for c in {**CANDIDATES, **LIBRARY_FORMS}:
        rho = np.mean([means[g][c][0] for g in dev])
        broad = [means[g][c][3] for g in dev if "broad" in g]
        lines.append(f"| {c} | {rho:.3f} | {np.mean(broad) if broad else float('nan'):.3f} |")
    parts.append("\n".join(lines) + "\n")
    if fresh_results:
        parts.append(difference(fresh_results, DEFAULT, "consensus"))
    if args.fresh_4 and all(g in fresh_results for g in RECIPES_FRESH_4):
        parts.append(difference({g: fresh_results[g] for g in RECIPES_FRESH_4}, G, DEFAULT))
    if all((RESULTS / f).exists() for f in DEV_BOUNDARY.values()):
        parts.append(fit_g(list(DEV_BOUNDARY)))
    if args.fresh_4 and all((RESULTS / f).exists() for f in DEV_H.values()):
        parts.append(h_check(DEV_H))
    judged_h = {g: fresh_results[g] for g in {**RECIPES_FRESH_5, **RECIPES_FRESH_6} if g in fresh_results}
    if judged_h:  # the sets H was judged on (set 6: its confirmation)
        parts.append(difference(judged_h, H, DEFAULT))
        parts.append(difference(judged_h, H, "consensus"))
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
