"""The k-shot fine-tuning benchmark as one self-contained HTML page (inline PNGs only, like the ranking report).

Per target: the summary per k (spread between models, Spearman of the zero-shot score with the fine-tuned Dice),
Dice against k per model, convergence curves, the zoo similarity map (bottleneck CKA) and the layer-wise CKA
between each pre-trained and fine-tuned network.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.version import __version__
from bioimage_cte.outputs.reports import _figure, _fmt, _img, _png, write_page

__all__ = ["finetune_markdown", "write_finetune_report"]


def _k_order(k: str) -> float:
    return float("inf") if k == "all" else float(k)


def _dice_vs_k(payload: Mapping[str, Any]) -> str:
    runs = payload["runs"]
    ks = sorted({r["k"] for r in runs}, key=_k_order)
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    positions = list(range(len(ks) + 1))
    for model in dict.fromkeys(r["model"] for r in runs):
        by_k = {r["k"]: r for r in runs if r["model"] == model}
        first = by_k[next(iter(by_k))]
        scratch = first["init"] == "scratch"
        values = [np.nan if scratch else first["zero_shot_dice"]] + [by_k[k]["final_dice"] if k in by_k else np.nan
                                                                      for k in ks]
        ax.plot(positions, values, "--" if scratch else "-o", lw=1.2, ms=3, label=model,
                color="0.4" if scratch else None)
    ax.set_xticks(positions, ["0 (zero-shot)"] + [f"k={k}" for k in ks])
    ax.set_ylabel("test foreground Dice")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return _png(fig)


def _convergence(payload: Mapping[str, Any]) -> str:
    runs = payload["runs"]
    ks = sorted({r["k"] for r in runs}, key=_k_order)
    fig = _figure(3.4 * len(ks), 3.2)
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        for r in (r for r in runs if r["k"] == k):
            steps, dice = zip(*r["curve"], strict=True)
            scratch = r["init"] == "scratch"
            ax.plot(steps, dice, "--" if scratch else "-", lw=1, color="0.4" if scratch else None, label=r["model"])
        ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("test Dice")
    axes[-1].legend(fontsize=6, loc="lower right")
    return _png(fig)


def _heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> str:
    fig = _figure(3.0 + 0.5 * len(cols), 2.2 + 0.4 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="linear CKA")
    return _png(fig)


def _layer_heatmaps(layer_cka: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    models = list(layer_cka)
    ks = sorted({k for m in models for k in layer_cka[m]}, key=_k_order)
    out = []
    for k in ks:
        with_k = [m for m in models if k in layer_cka[m]]
        layers = list(dict.fromkeys(name for m in with_k for name in layer_cka[m][k]))
        matrix = np.array([[layer_cka[m][k].get(name, np.nan) or np.nan for name in layers] for m in with_k])
        out.append(_img(_heatmap(matrix, with_k, layers, f"pre-trained vs fine-tuned, k = {k}"),
                        f"layer-wise CKA k={k}"))
    return out


def _summary_rows(summary: Sequence[Mapping[str, Any]]) -> str:
    return "".join(
        f"<tr><td>{html.escape(s['k'])}</td><td class='num'>{s['n_models']}</td><td class='num'>{_fmt(s['best'])}</td>"
        f"<td>{html.escape(s['best_model'])}</td><td class='num'>{_fmt(s['worst'])}</td>"
        f"<td class='num'>{_fmt(s['spread'])}</td><td class='num'>{_fmt(s['std'])}</td>"
        f"<td class='num'>{_fmt(s['scratch_dice'])}</td><td class='num'>{_fmt(s['spearman'], 2)}</td>"
        f"<td class='num'>{_fmt(s['spearman_p'], 3)}</td><td>{_fmt(s['top1_hit'])}</td>"
        f"<td class='num'>{_fmt(s['regret'])}</td><td class='num'>{_fmt(s['mean_steps_to_95'], 0)}</td></tr>"
        for s in summary)


def _target_section(target: str, payload: Mapping[str, Any]) -> list[str]:
    cfg = payload["config"]
    parts = [f"<h2>{html.escape(target)}</h2>",
             f"<p class='note'>{cfg['steps']} steps per model and k (batch {cfg['batch_size']} x {cfg['patch']} px, "
             f"Adam lr {cfg['learning_rate']}, cosine, Dice + BCE, seed {cfg['seed']}); test images "
             f"{payload['split']['test']} held out; k = 0 is the zero-shot Dice. Spearman: zero-shot score "
             f"({html.escape(str(payload.get('zero_shot_name') or 'CTE'))}) vs Dice after fine-tuning.</p>",
             "<table class='summary'><tr><th>k</th><th>models</th><th>best</th><th>best model</th><th>worst</th>"
             "<th>spread</th><th>std</th><th>scratch</th><th>Spearman</th><th>p</th><th>top-1</th><th>regret</th>"
             "<th>steps to 95%</th></tr>" + _summary_rows(payload["summary"]) + "</table>"]
    if payload["split"].get("skipped"):
        parts.append("<p class='note'>skipped: " + html.escape("; ".join(payload["split"]["skipped"].values()))
                     + "</p>")
    for name, reason in payload.get("failures", {}).items():
        parts.append(f"<p class='failed'>{html.escape(name)}: {html.escape(reason)}</p>")
    if payload["runs"]:
        parts += ["<h3>Dice against k (dashed: from scratch)</h3>", _img(_dice_vs_k(payload), "dice vs k"),
                  "<h3>Convergence</h3>", _img(_convergence(payload), "convergence curves")]
    zoo = payload.get("zoo_cka") or {}
    if zoo.get("models"):
        parts += ["<h3>Zoo similarity: bottleneck CKA on the target images</h3><p class='note'>Near 1: the two "
                  "models represent these images almost identically (near-duplicates).</p>",
                  _img(_heatmap(np.array(zoo["cka"], dtype=float), zoo["models"], zoo["models"], "bottleneck CKA"),
                       "zoo CKA heatmap")]
    if payload.get("layer_cka"):
        parts += ["<h3>Feature reuse: CKA between pre-trained and fine-tuned layers</h3><p class='note'>1: the layer "
                  "was reused unchanged (up to rotation and scale); low: fine-tuning rewrote it.</p>"]
        parts += _layer_heatmaps(payload["layer_cka"])
    return parts


def write_finetune_report(benchmarks: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Write the fine-tuning benchmark of one or more targets (target name to benchmark JSON) as one HTML page.

    Each value is :meth:`bioimage_cte.studies.finetune.FinetuneBenchmark.to_json_dict` output. Returns ``path``.
    """
    body = ["<h1>bioimage-cte k-shot fine-tuning benchmark</h1>",
            f"<p class='note'>Generated {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
            f"bioimage-cte {html.escape(__version__)}.</p>"]
    for target, payload in benchmarks.items():
        body += _target_section(target, payload)
    return write_page(Path(path), "bioimage-cte fine-tuning benchmark", body)


def finetune_markdown(benchmarks: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-k summary of every target as a Markdown table (README and results files)."""
    lines = ["| target | k | models | best (model) | worst | spread | best scratch | Spearman(zero-shot, fine-tuned) | "
             "top-1 | regret | steps to 95% |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for target, payload in benchmarks.items():
        for s in payload["summary"]:
            spearman = "n/a" if s["spearman"] is None else f"{s['spearman']:.2f}"
            top1 = "n/a" if s["top1_hit"] is None else ("yes" if s["top1_hit"] else "no")
            regret = "n/a" if s["regret"] is None else f"{s['regret']:.3f}"
            scratch = "n/a" if s["scratch_dice"] is None else f"{s['scratch_dice']:.3f}"
            lines.append(f"| {target} | {s['k']} | {s['n_models']} | {s['best']:.3f} ({s['best_model']}) | "
                         f"{s['worst']:.3f} | {s['spread']:.3f} | {scratch} | {spearman} | {top1} | {regret} | "
                         f"{s['mean_steps_to_95']:.0f} |")
    return "\n".join(lines) + "\n"
