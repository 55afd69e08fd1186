"""The HTML report of one ranking (per-model zoo reports: :mod:`bioimage_cte.outputs.zoo_reports`; every model on
every target: :mod:`bioimage_cte.outputs.leaderboard`).

:func:`write_html_report` writes one self-contained page (every figure an inline PNG, no external CSS, scripts or
fonts) with the ranking, bootstrap intervals, per-image scores, the predictions of the best and the worst model
(input, clean, perturbed and the per-pixel disagreement the score averages) and, given an evaluation on labelled
images, how well the ranking agreed with the true one.

Rendering only: the overlays come from :func:`bioimage_cte.run.overlays.report_overlays`.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.fileutils import write_atomic
from bioimage_cte.base.version import __version__
from bioimage_cte.run.ranking import FEW_IMAGES, interval_label

__all__ = ["write_html_report", "write_page"]


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _interval(lo: Any, hi: Any, digits: int = 3) -> str:
    if lo is None or not math.isfinite(float(lo)):
        return "n/a"
    return f"[{_fmt(float(lo), digits)}, {_fmt(float(hi), digits)}]"


def _figure(width: float, height: float):
    # A bare Figure renders with Agg without touching pyplot's global backend (a notebook's backend stays as it is).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _label(text: str, chars: int = 60) -> str:
    """An axis label in lines of at most ``chars`` characters: long model names leave the axes narrow, and a label
    wider than its figure is cut off at the edge."""
    return "\n".join(textwrap.wrap(text, chars))


def _ranking_chart(names: list[str], scores: list[float | None], ci: np.ndarray, estimator: str, n: int) -> str:
    # Points with whiskers rather than bars: CTE scores crowd near 1, where bars from 0 would all look equal.
    fig = _figure(7.5, 0.42 * len(names) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    values = np.array([np.nan if s is None else s for s in scores], dtype=float)
    ok = np.isfinite(values) & np.isfinite(ci).all(axis=1)
    ax.hlines(y[ok], ci[ok, 0], ci[ok, 1], color="#4c72b0", linewidth=2.5, alpha=0.6)
    ax.plot(values, y, "o", color="#4c72b0", markersize=7, zorder=3)
    finite = values[np.isfinite(values)]
    for yi, v in zip(y, values, strict=True):
        if not np.isfinite(v):
            ax.text(float(finite.min()) if finite.size else 0.0, yi, "no score", va="center", fontsize=8, color="#a33")
    ax.set_yticks(y, [f"{i + 1}. {n}" for i, n in enumerate(names)])
    ax.set_ylim(len(names) - 0.5, -0.5)
    what = "95% bootstrap interval" if n >= FEW_IMAGES else f"spread over {n} images"
    ax.set_xlabel(_label(f"{estimator} score (median over images; higher is better); line: {what}"))
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _distribution_chart(names: list[str], per_image: list[list[float | None]], estimator: str, seed: int) -> str:
    fig = _figure(7.5, 0.42 * len(names) + 1.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    data = [np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float) for values in per_image]
    positions = np.arange(len(names))
    filled = [(p, d) for p, d in zip(positions, data, strict=True) if d.size]
    if filled:
        ax.boxplot([d for _, d in filled], positions=[p for p, _ in filled], orientation="horizontal",
                   widths=0.5, showfliers=False, medianprops={"color": "#c44e52"})
    for p, d in zip(positions, data, strict=True):
        ax.scatter(d, p + rng.uniform(-0.15, 0.15, d.size), s=14, color="#4c72b0", alpha=0.7, zorder=3)
    ax.set_yticks(positions, [f"{i + 1}. {n}" for i, n in enumerate(names)])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel(_label(f"{estimator} score per image (one dot per image; box: quartiles, red: median)"))
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _display(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1.0, 99.8))
    return np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def _middle(array: np.ndarray) -> np.ndarray:
    return array[array.shape[0] // 2] if array.ndim == 3 else array


#: Characters per line of a panel title: longer titles (image file names) wrap instead of being cut off.
_TITLE_CHARS = 26


def _title(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _TITLE_CHARS, break_on_hyphens=False)) or text


def _overlay_figure(name: str, rank: int, rows, indices: list[int], image_paths: Sequence[Path],
                    per_image: Sequence[float | None], *, scored: str, consistency: str,
                    captions: Mapping[int, str]) -> str:
    perturbing = any(perturbed is not None for _, _, perturbed, _ in rows)
    n_cols = 4 if perturbing else 2
    fig = _figure(2.9 * n_cols, 2.7 * len(rows) + 0.5)
    fig.suptitle(f"rank {rank}: {name}", fontsize=11)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    # what a probability panel shows: the map the model is scored on (a boundary-only model's is its boundary map)
    bar = f"{scored} probability"
    measure = "1 - effective invariance" if consistency == "soft" else "masks differ (1) or agree (0)"
    for r, ((image, clean, perturbed, disagreement), i) in enumerate(zip(rows, indices, strict=True)):
        score = per_image[i] if i < len(per_image) else None
        panels = [(_display(image), "gray", Path(image_paths[i]).name, None),
                  (clean, "magma", "clean prediction", bar)]
        if perturbed is not None:
            panels += [(perturbed, "magma", f"perturbed: {captions.get(i, 'as scored')}", bar),
                       (disagreement, "inferno", f"disagreement (image score {_fmt(score)})", measure)]
        for c, (array, cmap, title, label) in enumerate(panels):
            shown = axes[r, c].imshow(array, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[r, c].set_title(_title(title), fontsize=8)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if label:  # every probability and disagreement panel on the same fixed 0-1 scale, with its bar
                colorbar = fig.colorbar(shown, ax=axes[r, c], fraction=0.046, pad=0.02)
                colorbar.set_label(_title(label), fontsize=7)
                colorbar.ax.tick_params(labelsize=7)
    return _png(fig)


def _evaluation_section(evaluation: Mapping[str, Any], ranking: Mapping[str, Any], estimator: str) -> str:
    metric = str(evaluation.get("metric", "dice"))
    truth = evaluation.get("true_performance", {})
    models = ranking.get("models", [])
    points = [(m["rank"], m["score"], truth.get(m["name"], {}).get(metric)) for m in models]
    points = [(r, s, t) for r, s, t in points if s is not None and t is not None]
    stats = (evaluation.get("agreement") or {}).get(estimator) or {}
    parts = ["<h2>Agreement with true performance</h2>"]
    if points:
        fig = _figure(6.5, 4.8)
        ax = fig.add_subplot()
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.scatter(xs, ys, s=30, color="#4c72b0", zorder=3)
        # labelled by rank, not name: names of close models overlap, and the ranking table maps ranks to names
        for rank, x, y in points:
            ax.annotate(str(rank), (x, y), fontsize=8, xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel(f"{estimator} score (no labels); points labelled by rank")
        ax.set_ylabel(f"true {metric} (labels)")
        ci = stats.get("spearman_ci")
        title = f"Spearman ρ = {_fmt(stats.get('spearman'), 2)}"
        if ci:
            title += f" [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]"
        ax.set_title(title + f", Kendall τ = {_fmt(stats.get('kendall'), 2)}", fontsize=10)
        ax.grid(alpha=0.3)
        parts.append(_img(_png(fig), f"{estimator} score against true {metric}"))
    rows = []
    for name, s in (evaluation.get("agreement") or {}).items():
        ci = s.get("spearman_ci")
        interval = _interval(ci[0], ci[1], 2) if ci else "n/a"
        own = " class='own'" if name == estimator else ""
        rows.append(
            f"<tr{own}><td>{html.escape(name)}</td>"
            f"<td>{_fmt(s.get('spearman'), 2)}</td><td>{interval}</td>"
            f"<td>{_fmt(s.get('spearman_p'), 3)}</td><td>{_fmt(s.get('kendall'), 2)}</td>"
            f"<td>{_fmt(s.get('weighted_tau'), 2)}</td><td>{'yes' if s.get('top1_hit') else 'no'}</td>"
            f"<td>{_fmt(s.get('regret'), 3)}</td><td>{_fmt(s.get('random_regret'), 3)}</td></tr>")
    if rows:
        parts.append(
            f"<p>Each estimator's ranking against the ranking by true {html.escape(metric)} on labelled images "
            f"(ρ: Spearman, τ: Kendall; regret: best true {html.escape(metric)} minus that of the model ranked "
            "first).</p><table><tr><th>estimator</th><th>ρ</th><th>ρ 95% CI</th><th>p</th><th>τ</th>"
            "<th>weighted τ</th><th>top-1 hit</th><th>regret</th><th>random regret</th></tr>"
            + "".join(rows) + "</table>")
    return "\n".join(parts)


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.own td { font-weight: bold; } img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; } .failed { color: #a33; }
"""


def write_html_report(
    ranking_json: Mapping[str, Any],
    path: Path,
    *,
    image_paths: Sequence[Path],
    evaluation_json: Mapping[str, Any] | None = None,
    overlays: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write one self-contained HTML report of a ranking.

    The page holds the ranking table, a bar chart of the scores with 95% bootstrap intervals
    over images, the per-image scores of every model, the input, clean and perturbed
    predictions of the best and the worst model on a few images (``overlays``, from
    :func:`bioimage_cte.run.overlays.report_overlays`: this module only renders), the agreement with true
    performance when an evaluation is given, and the settings. Every figure is an inline PNG; the page loads
    nothing from anywhere.

    Parameters
    ----------
    ranking_json : mapping
        A ranking as written by ``bioimage-cte rank --output``.
    path : Path
        The .html file to write.
    image_paths : sequence of Path
        The target images, in the order they were ranked (``per_image`` follows this order).
    evaluation_json : mapping, optional
        :meth:`bioimage_cte.run.ranking.Evaluation.to_json_dict` output on labelled images.
    overlays : mapping, optional
        :func:`bioimage_cte.run.overlays.report_overlays` output; without it, no predictions are shown.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    BioimageCteError
        ``ranking_json`` is not a ranking.
    WriteError
        ``path`` cannot be written.
    """
    models = ranking_json.get("models") if isinstance(ranking_json, Mapping) else None
    settings = ranking_json.get("settings") if isinstance(ranking_json, Mapping) else None
    if not isinstance(models, list) or not isinstance(settings, Mapping):
        raise BioimageCteError(f"cannot write {path}: the ranking has no 'models' or 'settings'; pass a ranking "
                               "written by 'bioimage-cte rank --output'")
    estimator = str(settings.get("estimator", "?"))
    names = [str(m["name"]) for m in models]
    per_image = [list(m.get("per_image") or []) for m in models]
    # the interval of each model's median over images, as the ranking recorded it (bioimage_cte.run.ranking)
    ci = np.array([[np.nan if v is None else v for v in (m.get("interval") or (None, None))] for m in models],
                  dtype=float).reshape(-1, 2)

    n_images = len(image_paths) or int(settings.get("n_images") or 0)  # a zoo page may not have the images at hand
    body = [f"<h1>bioimage-cte ranking: {html.escape(estimator)} on {n_images} images</h1>",
            f"<p class='note'>{len(models)} models ranked, {len(ranking_json.get('failures', []))} failed. "
            "Higher scores mean more consistent predictions under perturbation, which predicts better transfer "
            "to these images. Generated "
            f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by bioimage-cte "
            f"{html.escape(__version__)}.</p>", "<h2>Ranking</h2>"]
    rows = "".join(
        f"<tr><td class='num'>{m['rank']}</td><td>{html.escape(str(m['name']))}</td>"
        f"<td class='num'>{_fmt(m.get('score'))}</td>"
        f"<td class='num'>{_interval(lo, hi)}</td>"
        f"<td class='num'>{m.get('n_valid', '')}/{m.get('n_images', '')}</td><td class='num'>{m.get('n_empty', '')}"
        f"</td><td>{'yes' if m.get('tied_with_top') else ''}</td><td>{html.escape(str(m.get('note') or ''))}</td></tr>"
        for m, (lo, hi) in zip(models, ci, strict=True))
    n = max([int(m.get("n_valid") or 0) for m in models], default=0)
    body.append("<table id='ranking'><tr><th>rank</th><th>model</th><th>score</th><th>interval</th>"
                "<th>valid/images</th><th>empty</th><th>~top</th><th>note</th></tr>" + rows + "</table>"
                f"<p class='note'>interval: {html.escape(interval_label(n))}. ~top: these images cannot tell the "
                "model from the top one (paired bootstrap of the difference of medians).</p>")
    failures = ranking_json.get("failures", [])
    if failures:
        body.append("<table id='failures'><tr><th>failed model</th><th>stage</th><th>reason</th></tr>" + "".join(
            f"<tr class='failed'><td>{html.escape(str(f.get('name')))}</td><td>{html.escape(str(f.get('stage')))}"
            f"</td><td>{html.escape(str(f.get('reason')))}</td></tr>" for f in failures) + "</table>")
    if models:
        body.append("<h2>Scores with their intervals</h2><p class='note'>Images resampled with replacement "
                    f"(2000 times) per model: {html.escape(interval_label(n))}.</p>")
        body.append(_img(_ranking_chart(names, [m.get("score") for m in models], ci, estimator, n), "ranking chart"))
        body.append("<h2>Scores per image</h2>")
        body.append(_img(_distribution_chart(names, per_image, estimator, seed), "per-image scores"))
    body.extend(_overlay_section(models, settings, image_paths, overlays or {}))
    if evaluation_json:
        body.append(_evaluation_section(evaluation_json, ranking_json, estimator))
    shown = {k: v for k, v in settings.items() if v is not None and v != [] and v != {}}  # unset ones say nothing
    body.append("<h2>Settings</h2><table id='settings'>" + "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td>"
        "</tr>" for k, v in shown.items()) + "</table>")
    return write_page(Path(path), f"bioimage-cte ranking ({estimator})", body)


def write_page(path: Path, title: str, body: Sequence[str], style: str = _STYLE) -> Path:
    """Write one self-contained HTML page (atomically): ``body`` is a list of HTML fragments."""
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            # nothing may load from outside the file: only inline styles and data: images
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    return write_atomic(path, page.encode("utf-8"))


def _overlay_section(models: list[Mapping[str, Any]], settings: Mapping[str, Any], image_paths: Sequence[Path],
                     overlays: Mapping[str, Any]) -> list[str]:
    if not overlays.get("models") and not overlays.get("errors"):
        return []
    indices = list(overlays.get("indices", []))
    consistency = str(overlays.get("consistency", "soft"))
    summary = overlays.get("summary")
    averaged = ("1 - effective invariance: 0 where both predictions agree with full confidence, up to 1 where "
                "they disagree" if consistency == "soft" else "1 where the two masks differ, 0 where they agree")
    parts = ["<h2>Predictions of the best and the worst model</h2>"]
    if summary:
        parts.append(f"<p class='note'>{html.escape(summary)}. Each row: the input, the clean prediction, the "
                     "perturbed prediction (named above it) and the per-pixel disagreement the score averages "
                     f"({averaged}; black where both predictions are background): its mean over the foreground "
                     "is 1 - the image's score, so a less consistent model shows more light pixels. Every panel "
                     "uses one 0-1 colour scale.</p>")
    else:
        parts.append(f"<p class='note'>{html.escape(str(settings.get('estimator', '')))} compares no perturbed "
                     "prediction with the clean one: clean predictions only.</p>")
    by_name = {str(m["name"]): m for m in models}
    for name, error in overlays.get("errors", {}).items():
        parts.append(f"<p class='failed'>could not run {html.escape(name)} again: {html.escape(error)}</p>")
    captions = {int(k): str(v) for k, v in (overlays.get("captions") or {}).items()}
    for name, predictions in overlays.get("models", {}).items():
        model = by_name[name]
        scored = str((model.get("output") or {}).get("scored") or "foreground")
        rows = [(_middle(image), _middle(clean.foreground),
                 None if perturbed is None else _middle(perturbed.foreground),
                 None if disagreement is None else _middle(disagreement))
                for image, clean, perturbed, disagreement in predictions]
        figure = _overlay_figure(name, int(model["rank"]), rows, indices, image_paths,
                                 list(model.get("per_image") or []), scored=scored, consistency=consistency,
                                 captions=captions)
        parts.append(_img(figure, f"predictions of {name}"))
    return parts
