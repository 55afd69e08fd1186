"""How good will the winner be: leave-one-target-out error and conformal coverage of ``predicted_dice``.

    python benchmarks/predicted_dice.py [--refit] [--plot docs/predicted_dice.png]

Data: every labelled target with measured signals (benchmarks/results/quality_values_{shipped,held-out,
new-held-out}.json: the 6 shipped 2D targets and the 34 held-out ones, each with its task's demo models: 270
model x target pairs). The signals are what a ranking run computes without labels (medians over the images of
``tta`` consistency, Dice with the candidates' consensus, foreground fraction); the true Dice is the shipped
transfer matrix (resources/zoo/transfer_matrix.csv) for the shipped targets and the held-out targets' own
transfer matrix (resources/calibration/transfer_matrix_held_out.csv, written here from the same runs).

``--refit`` rewrites resources/calibration/signals.csv, transfer_matrix_held_out.csv and predicted_dice.json (what
``bioimage-cte calibrate`` does from those files). Then, per feature set: leave-one-target-out MAE over all
pairs and for the model the default (``tta``) ranks first on each target, the 90 % conformal intervals' coverage
(each target's half-width from the other targets' held-out residuals), beside the trivial predictor (the
calibration set's mean Dice). Bars (issue 25): MAE top <= 0.08, all <= 0.12, coverage >= 85 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bioimage_cte.cte.calibration import DEFAULT_FEATURE_SETS, leave_one_target_out  # noqa: E402
from bioimage_cte.studies.calibration import calibrate, calibration_rows, read_signals, write_signals  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CAL = ROOT / "resources" / "calibration"
SETS = ("shipped", "held-out", "new-held-out")


def _median(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")


def signals_from_values(sets=SETS, suffix: str = "") -> tuple[list[dict], list[tuple[str, str, float]]]:
    """Signal rows (task pool: the models a ``--tag`` run ranks) and each pair's true Dice (mean over images)."""
    rows, truth = [], []
    for which in sets:
        values = json.loads((RESULTS / f"quality_values_{which}{suffix}.json").read_text())
        for target, t in values["targets"].items():
            for model in t["pools"]["task"]:
                m = t["models"][model]
                rows.append({"target": target, "model": model, "task": t["task"], "tta": _median(m["tta"]),
                             "consensus": _median(t["consensus"]["task"][model]),
                             "foreground": _median(m["foreground"])})
                truth.append((model, target, float(np.mean(m["true"]))))
    return rows, truth


def write_held_out_matrix(truth, path: Path, shipped: set[str]) -> None:
    with path.open("w") as f:
        f.write("model,target,metric,value\n")
        for model, target, dice in truth:
            if target not in shipped:
                f.write(f"{model},{target},dice,{dice:.6f}\n")


BROAD = {"shipped nuclei": "quality_values_shipped_nuclei_broad.json",
         "held-out nuclei": "quality_values_held-out_nuclei_broad.json",
         "fresh held-out nuclei": "quality_values_fresh-held-out_nuclei_broad.json"}


def external_check() -> list[str]:
    """The shipped calibration, unchanged, on pools with unet2d_nuclei_broad (a model of another recipe, never in
    the fit; on the fresh held-out set also targets never in the fit)."""
    from bioimage_cte.cte.calibration import load_calibration

    cal = load_calibration()
    lines = ["", "## The shipped calibration on candidate pools with unet2d_nuclei_broad (not refitted)", "",
             "| set | pairs | MAE all | coverage all | nuclei_broad: true / predicted (interval) per target |",
             "|---|---|---|---|---|"]
    for group, file in BROAD.items():
        path = RESULTS / file
        if not path.exists():
            lines.append(f"| {group} | not measured | | | |")
            continue
        values = json.loads(path.read_text())
        errors, covered, broad = [], [], []
        for target, t in values["targets"].items():
            for model in t["pools"]["task"]:
                m = t["models"][model]
                signals = {"tta": _median(m["tta"]), "consensus": _median(t["consensus"]["task"][model]),
                           "foreground": _median(m["foreground"])}
                p = cal.predict(signals, task=t["task"])
                true = float(np.mean(m["true"]))
                errors.append(abs(p.estimate - true))
                covered.append(p.interval[0] <= true <= p.interval[1])
                if model == "unet2d-nuclei-broad":
                    broad.append(f"{target}: {true:.2f} / {p.estimate:.2f} ({p.interval[0]:.2f}-{p.interval[1]:.2f})")
        lines.append(f"| {group} | {len(errors)} | {np.mean(errors):.3f} | {np.mean(covered):.1%} | "
                     f"{'; '.join(broad)} |")
    return lines


def plot(check: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, t, c = (np.asarray(check[k]) for k in ("predicted", "true", "covered"))
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1)
    ax.scatter(t[c], p[c], s=12, color="#1f77b4", label=f"true Dice inside the 90 % interval ({c.mean():.0%})")
    ax.scatter(t[~c], p[~c], s=16, color="#d62728", marker="x", label="outside")
    ax.set_xlabel("true Dice (labels)")
    ax.set_ylabel("predicted Dice (no labels; target left out of the fit)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refit", action="store_true", help="rewrite the signals, matrix and calibration files")
    parser.add_argument("--plot", type=Path, default=None, help="scatter of predicted vs true Dice (png)")
    parser.add_argument("--output", type=Path, default=RESULTS / "predicted_dice.md")
    args = parser.parse_args()
    matrices = [ROOT / "resources" / "zoo" / "transfer_matrix.csv", CAL / "transfer_matrix_held_out.csv"]
    if args.refit:
        rows, truth = signals_from_values()
        shipped = set(json.loads((RESULTS / "quality_values_shipped.json").read_text())["targets"])
        CAL.mkdir(parents=True, exist_ok=True)
        write_signals(rows, CAL / "signals.csv")
        write_held_out_matrix(truth, matrices[1], shipped)
        calibrate(CAL / "signals.csv", matrices, CAL / "predicted_dice.json")
    data = calibration_rows(read_signals(CAL / "signals.csv"), matrices)
    lines = [f"# predicted_dice: leave-one-target-out on {len({r.target for r in data})} targets, {len(data)} "
             "model x target pairs", "",
             "| signals | MAE top-ranked (tta's first) | MAE all | 90 % interval coverage | half-width | "
             "trivial MAE top | trivial MAE all |", "|---|---|---|---|---|---|---|"]
    checks = {}
    for features in DEFAULT_FEATURE_SETS:
        check = leave_one_target_out(data, features, top_signal="tta")
        checks[features] = check
        lines.append(f"| {'+'.join(features)} | {check['mae_top']:.3f} | {check['mae']:.3f} | "
                     f"{check['coverage']:.1%} | {check['half_width']:.3f} | {check['trivial_mae_top']:.3f} | "
                     f"{check['trivial_mae']:.3f} |")
    best = checks[DEFAULT_FEATURE_SETS[0]]
    lines += ["", f"Bars: MAE top <= 0.08, all <= 0.12, coverage >= 85 %. Primary signals "
              f"{'+'.join(DEFAULT_FEATURE_SETS[0])}: top {best['mae_top']:.3f}, all {best['mae']:.3f}, coverage "
              f"{best['coverage']:.1%}."]
    lines += external_check()
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.write_text(text)
    if args.plot:
        plot(best, args.plot, f"{best['n']} held-out model x target pairs ({len(best['targets'])} targets), "
             f"MAE {best['mae']:.3f}, coverage {best['coverage']:.0%}")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
