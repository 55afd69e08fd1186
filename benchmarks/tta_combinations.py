"""Issue #13: do weight-free combinations of tta with other label-free signals beat tta? (prints tables; not a test)

    python benchmarks/tta_combinations.py [--output benchmarks/results/tta_combinations_tables.md]

The candidates were declared, each with its reason, before any was computed (``results/tta_combinations.md``).
All are derived from :mod:`quality_values`' cached per-image values with :mod:`ranking_quality`'s statistics and
the library's :func:`bioimage_cte.cte.combined.per_image_combined`; no model runs. The three sets it reads are all
development data by now (the new held-out set was looked at after #13's first design was frozen): a candidate that
cleared the bar here would still need a fresh held-out set before it could become the default.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ranking_quality as rq  # noqa: E402

from bioimage_cte.cte.combined import normalised_ranks, per_image_combined  # noqa: E402
from bioimage_cte.cte.estimators import CTEDihedral, TTAAgreement  # noqa: E402

TTA_K = set(TTAAgreement().transforms)


Score = Callable[[dict, list[str], int, str], np.ndarray]


def per_image(t: dict, names: list[str], seed: int, sig: str, pool: str) -> np.ndarray:
    """The (model, image) values of one label-free signal on target ``t``."""
    if sig == "tta":
        return np.array([t["models"][n]["tta"] for n in names], float)
    if sig == "consensus":
        return np.array([t["consensus"][pool][n] for n in names], float)
    fam, kind = sig.split("-")
    key = {"dih": "dihedral", "dropout": "dropout@0.2", "noise": "noise@0.1"}[fam]
    return np.array([t["models"][n]["seeds"][str(seed)][key][kind] for n in names], float)


def row_mean(m: np.ndarray) -> np.ndarray:
    return np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in m])


def rank_mean(sigs: list[str]) -> Score:
    """The library's combination: per image, each signal ranked across the models; mean over signals, images."""
    def f(t: dict, names: list[str], seed: int, pool: str) -> np.ndarray:
        return row_mean(per_image_combined({s: per_image(t, names, seed, s, pool) for s in sigs}))
    return f


def rank_median(sigs: list[str]) -> Score:
    """As :func:`rank_mean` with the median over signals: one fooled signal of four is ignored."""
    def f(t: dict, names: list[str], seed: int, pool: str) -> np.ndarray:
        stacks = [per_image(t, names, seed, s, pool) for s in sigs]
        ranks = np.stack([np.column_stack([normalised_ranks(s[:, i]) for i in range(s.shape[1])]) for s in stacks])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an image where every family is NaN has a NaN median
            med = np.nanmedian(ranks, axis=0)
        return row_mean(med)
    return f


def tta_pooled(seeds_used: Callable[[int], list[int]]) -> Score:
    """Per image, the hard agreement averaged over tta's 3 elements and the distinct elements the seeds drew."""
    def f(t: dict, names: list[str], seed: int, pool: str) -> np.ndarray:
        out = []
        for n in names:
            m = t["models"][n]
            vals = []
            for i in range(t["n_images"]):
                extra = {}
                for s in seeds_used(seed):
                    k = CTEDihedral.transform(s, i)
                    if k not in TTA_K:
                        h = m["seeds"][str(s)]["dihedral"]["hard"][i]
                        if k in extra and not (np.isnan(h) and np.isnan(extra[k])):
                            assert abs(extra[k] - h) < 1e-9, (n, i, k, extra[k], h)
                        extra[k] = h
                tta = m["tta"][i]
                parts = [tta] * 3 + list(extra.values())  # tta is already the mean over its 3 elements
                vals.append(np.nan if np.isnan(tta) else float(np.nanmean(parts)))
            v = np.array(vals)
            out.append(np.nanmedian(v) if np.isfinite(v).any() else np.nan)
        return np.array(out)
    return f


ALL_SEEDS = [0, 1, 2, 3, 4]
EST = {
    "tta (baseline)": rq.ESTIMATORS["tta (the new default)"],
    "ref: cte-dihedral hard": rq.ESTIMATORS["cte-dihedral (hard)"],
    "ref: consensus": rq.ESTIMATORS["consensus"],
    "C1 rank{tta,dih-hard}": rank_mean(["tta", "dih-hard"]),
    "C2 rank{tta,dropout-soft}": rank_mean(["tta", "dropout-soft"]),
    "C3 rank{tta,consensus}": rank_mean(["tta", "consensus"]),
    "C4 median-rank{tta,dih-h,drop-s,noise-s}": rank_median(["tta", "dih-hard", "dropout-soft", "noise-soft"]),
    "C5 tta-4 (tta + seed's element)": tta_pooled(lambda s: [s]),
    "C6 tta-all (tta + seeds 0-4 elements)": tta_pooled(lambda s: ALL_SEEDS),
    "C7 rank{tta,dih-h,noise-h}": rank_mean(["tta", "dih-hard", "noise-hard"]),
    "C8 rank{tta,dih-h,drop-h,noise-h}": rank_mean(["tta", "dih-hard", "dropout-hard", "noise-hard"]),
}

SETS = ("shipped", "held-out", "new-held-out")
POOLS = ("task", "task+calibration")
BASE = "tta (baseline)"


def evaluate_all() -> dict[str, dict]:
    """(set|pool) -> estimator -> seed -> target -> (Spearman, Kendall, regret, n models), as ranking_quality."""
    out = {}
    for which in SETS:
        values = json.loads((ROOT / "benchmarks" / "results" / f"quality_values_{which}.json").read_text())
        for pool in POOLS:
            out[f"{which}|{pool}"] = rq.evaluate(values, pool, EST)
    return out


def seed_stats(by_seed: dict) -> np.ndarray:
    """seeds x (mean Spearman, min Spearman, mean Kendall, mean regret) over targets."""
    rows = []
    for seed in sorted(by_seed, key=int):
        a = np.array(list(by_seed[seed].values()), float)
        rows.append((np.nanmean(a[:, 0]), np.nanmin(a[:, 0]), np.nanmean(a[:, 1]), np.nanmean(a[:, 2])))
    return np.array(rows)


def tables(raw: dict) -> str:
    summary, lines = {}, []
    for pool in POOLS:
        for which in SETS:
            res = raw[f"{which}|{pool}"]
            lines += [f"### {which}, pool {pool} (mean over seeds 0-4, range over seeds)", "",
                      "| estimator | mean Spearman | min Spearman | mean Kendall | mean regret | Δ Spearman vs tta |",
                      "|---|---|---|---|---|---|"]
            base = seed_stats(res[BASE])[:, 0].mean()
            for name, by_seed in res.items():
                p = seed_stats(by_seed)
                m, lo, hi = p[:, 0].mean(), p[:, 0].min(), p[:, 0].max()
                summary[(pool, which, name)] = (m, p[:, 3].mean())
                spread = f" ({lo:.3f}–{hi:.3f})" if hi - lo >= 0.0005 else ""
                lines.append(f"| {name} | {m:.3f}{spread} | {p[:, 1].mean():.2f} | {p[:, 2].mean():.3f} | "
                             f"{p[:, 3].mean():.4f} | {m - base:+.3f} |")
            lines.append("")
    lines += ["### The bar, pool task: mean Spearman >= 0.85, >= tta + 0.03, mean regret <= tta's, on each set", "",
              "| estimator | " + " | ".join(f"{w}: Δ Spearman / Δ regret" for w in SETS) + " | on all three |",
              "|---|---|---|---|---|"]
    for name in EST:
        cells, every = [], True
        for which in SETS:
            (m, regret), (mb, regret_b) = summary[("task", which, name)], summary[("task", which, BASE)]
            ok = m >= 0.85 and m >= mb + 0.03 and regret <= regret_b + 1e-12
            every &= ok
            cells.append(f"{m - mb:+.3f} / {regret - regret_b:+.4f} {'pass' if ok else 'fail'}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if every else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "tta_combinations_tables.md")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # nan-means over targets where a signal is undefined for every model
    text = tables(evaluate_all())
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
