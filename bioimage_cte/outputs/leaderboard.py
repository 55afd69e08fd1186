"""The zoo leaderboard: one self-contained HTML page of every model on every target.

A zoo run (``bioimage-cte zoo-rank``) writes one ranking JSON per target; :func:`write_leaderboard` puts them side
by side: a heat map of models x targets (each cell the model's score, coloured by its rank on that target), the
flags a maintainer must see before trusting a winner (a model that marks nearly every pixel as foreground, a target
whose candidates mix 3D and slice-wise 2D models, models the images cannot tell from the top one), the models that
do not fit a target or failed on it and why, links to each target's report, and one card per model that a zoo
maintainer could publish. Sorting (click a column) and filtering (by tag or name) run in a small inline script;
without it the page still shows everything. The page loads nothing from anywhere.

:func:`target_summaries` is the same reading for the console's compact table (top 3 per target).
"""

from __future__ import annotations

import datetime
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.fileutils import write_atomic
from bioimage_cte.base.version import __version__
from bioimage_cte.run.ranking import SATURATED_FOREGROUND

__all__ = ["Cell", "ModelRow", "TargetSummary", "leaderboard_rows", "read_rankings", "target_summaries",
           "write_leaderboard", "write_zoo_pages"]


@dataclass(frozen=True)
class Cell:
    """One model on one target.

    ``status`` is ``ranked`` (with a score), ``unscored`` (ranked without a valid score, e.g. an empty
    prediction), ``failed``, ``skipped`` (package code not allowed), ``unfit`` (the model cannot see these images or
    is made for another task) or ``absent`` (not paired with the target).
    """

    status: str
    rank: int | None = None
    n_models: int = 0
    score: float | None = None
    tied_with_top: bool = False
    foreground: float | None = None
    reason: str = ""

    @property
    def position(self) -> float | None:
        """1 for the top model of the target, 0 for the last, None when not ranked with a score."""
        if self.status != "ranked" or self.rank is None:
            return None
        return 1.0 if self.n_models <= 1 else (self.n_models - self.rank) / (self.n_models - 1)

    @property
    def saturated(self) -> bool:
        """Whether the model marks nearly every pixel as foreground: its consistency says little."""
        return self.foreground is not None and self.foreground >= SATURATED_FOREGROUND

    def flags(self) -> list[str]:
        """Short flags for a table: ``~top``, ``fg 98 %``."""
        out = ["~top"] if self.tied_with_top and self.status == "ranked" else []
        if self.saturated:
            out.append(f"fg {self.foreground * 100:.0f} %")
        return out


@dataclass(frozen=True)
class ModelRow:
    """A model across the targets: its cells in target order, and what is known of its package."""

    name: str
    source: str
    cells: tuple[Cell, ...]
    tags: tuple[str, ...] = ()
    weights: str = ""

    @property
    def mean_position(self) -> float | None:
        """Mean of :attr:`Cell.position` over the targets it was ranked on (1: top everywhere)."""
        values = [c.position for c in self.cells if c.position is not None]
        return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class TargetSummary:
    """One target of a zoo run, for the console: its best models and what was not ranked."""

    name: str
    n_ranked: int
    n_unfit: int
    n_failed: int
    top: tuple[tuple[int, str, float | None, tuple[str, ...]], ...]
    flags: tuple[str, ...] = field(default_factory=tuple)
    #: the first model's predicted Dice and 90 % interval, e.g. ``"Dice 0.82 (0.75-0.90)"``; "" without one
    best_dice: str = ""


def _cells_of(ranking: Mapping[str, Any]) -> dict[str, tuple[str, Cell]]:
    """Model name -> (source, cell) for every model a ranking names."""
    models = list(ranking.get("models") or [])
    n = len(models)
    out: dict[str, tuple[str, Cell]] = {}
    for m in models:
        score = m.get("score")
        status = "ranked" if score is not None and math.isfinite(float(score)) else "unscored"
        out[str(m["name"])] = (str(m.get("source", "")), Cell(
            status, int(m["rank"]), n, None if status == "unscored" else float(score), bool(m.get("tied_with_top")),
            m.get("foreground_fraction"), str(m.get("note") or "")))
    for f in ranking.get("failures") or []:
        stage = str(f.get("stage") or "predict")
        status = stage if stage in ("unfit", "skipped") else "failed"
        out.setdefault(str(f["name"]), (str(f.get("source", "")), Cell(status, n_models=n,
                                                                         reason=str(f.get("reason") or ""))))
    for u in ranking.get("not_fitting") or []:
        out.setdefault(str(u["model"]), (str(u.get("source", "")), Cell("unfit", n_models=n,
                                                                          reason=str(u.get("reason") or ""))))
    return out


def _package_facts(source: str) -> tuple[str, ...]:
    """The tags of a ranked model's package, when it can be found (a leaderboard without tags still works)."""
    from bioimage_cte.zoo.packages import locate_package, read_rdf

    try:
        tags = read_rdf(locate_package(source)).get("tags") or []
    except (BioimageCteError, OSError, ValueError):
        return ()
    return tuple(dict.fromkeys(str(t).lower() for t in tags if isinstance(t, str | int)))


def leaderboard_rows(rankings: Mapping[str, Mapping[str, Any]], *, read_tags: bool = True,
                     tags: Mapping[str, Sequence[str]] | None = None) -> list[ModelRow]:
    """Every model named by any ranking, with one cell per target (in the order of ``rankings``), best first.

    Models are ordered by their mean position over the targets they were ranked on, then by name; models ranked
    nowhere come last. A model's tags are ``tags[name]`` if given, else read from its package (``read_tags``).
    """
    per_target = {t: _cells_of(r) for t, r in rankings.items()}
    weights: dict[str, str] = {}
    for r in rankings.values():
        for m in r.get("models") or []:
            if m.get("weights"):
                weights.setdefault(str(m["name"]), str(m["weights"].get("format", "")))
    names = list(dict.fromkeys(name for cells in per_target.values() for name in cells))
    rows = []
    for name in names:
        source = next(cells[name][0] for cells in per_target.values() if name in cells)
        cells = tuple(per_target[t][name][1] if name in per_target[t] else Cell("absent") for t in rankings)
        known = tuple((tags or {}).get(name, ())) or (_package_facts(source) if read_tags else ())
        rows.append(ModelRow(name, source, cells, known, weights.get(name, "")))
    return sorted(rows, key=lambda r: (r.mean_position is None, -(r.mean_position or 0.0), r.name))


def target_summaries(rankings: Mapping[str, Mapping[str, Any]], *, top: int = 3) -> list[TargetSummary]:
    """Per target: how many models were ranked, did not fit and failed, its best ``top`` models with their flags,
    the target's own flags (candidates mixing 3D and slice-wise 2D models) and the first model's predicted Dice."""
    out = []
    for target, ranking in rankings.items():
        cells = _cells_of(ranking)
        best = []
        for m in (ranking.get("models") or [])[:top]:
            cell = cells[str(m["name"])][1]
            flags = tuple(cell.flags()) + (("no score",) if cell.status == "unscored" else ())
            best.append((int(m["rank"]), str(m["name"]), cell.score, flags))
        left = [c for _, c in cells.values()]
        first = (ranking.get("models") or [{}])[0]
        dice, interval = first.get("predicted_dice"), first.get("predicted_dice_interval")
        out.append(TargetSummary(target, len(ranking.get("models") or []),
                                 sum(c.status == "unfit" for c in left),
                                 sum(c.status in ("failed", "skipped") for c in left), tuple(best),
                                 ("mixed 2D/3D",) if ranking.get("warnings") else (),
                                 f"Dice {dice:.2f} ({interval[0]:.2f}-{interval[1]:.2f})" if dice is not None
                                 and interval else ""))
    return out


def read_rankings(folder: Path) -> dict[str, dict[str, Any]]:
    """The ranking JSONs of a folder (as ``zoo-rank`` writes them), by target name (the file's stem).

    Raises
    ------
    BioimageCteError
        The folder holds no ranking JSON, or a JSON that is not a ranking.
    """
    folder = Path(folder)
    rankings: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BioimageCteError(f"cannot read ranking {path} ({e}); pass a folder of ranking JSONs written by "
                                   "'bioimage-cte zoo-rank' or 'rank --output'") from e
        if not isinstance(payload, dict) or not isinstance(payload.get("models"), list):
            raise BioimageCteError(f"{path} is not a ranking (no 'models'); pass a folder of ranking JSONs written "
                                   "by 'bioimage-cte zoo-rank' or 'rank --output'")
        name = str((payload.get("target") or {}).get("name") or path.stem)
        rankings[name] = payload
    if not rankings:
        raise BioimageCteError(f"no ranking JSON in {folder}; pass the rankings/ folder a 'bioimage-cte zoo-rank' "
                               "run wrote")
    return rankings


def write_zoo_pages(rankings: Mapping[str, Mapping[str, Any]], out_dir: Path, *,
                    images: Mapping[str, Sequence[Path]] | None = None, name: str = "leaderboard.html") -> Path:
    """Write a zoo run's pages: ``<out_dir>/targets/<target>.html`` (each ranking's report, without predictions:
    no model is run) and ``<out_dir>/<name>``, the leaderboard, linking to them.

    ``images[target]`` are the target's images; default: the images folder its ranking records, if it exists.
    Returns the leaderboard's path.
    """
    from bioimage_cte.outputs.reports import write_html_report
    from bioimage_cte.predict.images import list_images

    out_dir = Path(out_dir)
    links = {}
    for target, ranking in rankings.items():
        paths = list((images or {}).get(target, ()))
        folder = Path(str((ranking.get("settings") or {}).get("images", "")))
        if not paths and folder.is_dir():
            paths = list_images(folder)
        page = f"{_slug(target)}.html"
        write_html_report(ranking, out_dir / "targets" / page, image_paths=paths)
        links[target] = f"targets/{page}"
    return write_leaderboard(rankings, out_dir / name, links=links)


# --- the page -----------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1em auto; color: #222;
       padding: 0 1em; max-width: 1800px; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.5em; border-bottom: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; } .controls { margin: 0.6em 0; display: flex; flex-wrap: wrap; gap: 0.8em;
  align-items: center; } .controls button[aria-pressed=true] { font-weight: bold; }
table.board { table-layout: fixed; width: 100%; border-collapse: collapse; font-size: 0.85em; }
table.board col.model { width: 14em; } table.board col.mean { width: 3.6em; }
table.board th, table.board td { border: 1px solid #e4e4e4; padding: 0.15em 0.25em; overflow: hidden; }
table.board thead th { position: sticky; top: 0; background: #fafafa; cursor: pointer; z-index: 1; }
th.target { height: 14.5em; vertical-align: bottom; }
th.target span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; display: inline-block;
  max-height: 14em; overflow: hidden; text-overflow: ellipsis; }
td.name { white-space: nowrap; text-overflow: ellipsis; }
td.cell { text-align: center; white-space: nowrap; font-variant-numeric: tabular-nums; font-size: 0.85em; }
td.cell.top { box-shadow: inset 0 0 0 2px #1a5d1a; font-weight: bold; }
td.cell.fg { background-image: repeating-linear-gradient(45deg, transparent 0 4px, rgba(160,0,0,.35) 4px 6px); }
td.cell.unfit { background: #f2f2f2; color: #aaa; } td.cell.failed, td.cell.skipped { background: #fbe4e4;
  color: #a33; } td.cell.unscored { background: #eee; color: #666; } td.num { text-align: right; }
.legend span.sw { display: inline-block; width: 1.2em; height: 0.9em; vertical-align: middle; margin: 0 0.2em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(20em, 1fr)); gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.8em; font-size: 0.85em; overflow-wrap: anywhere; }
.card h3 { margin: 0 0 0.3em 0; font-size: 1.05em; } .card table { border-collapse: collapse; width: 100%; }
.card td, .card th { text-align: left; padding: 0.1em 0.3em; border-bottom: 1px solid #eee; }
.tags { color: #555; } details { margin: 0.3em 0; } details li { overflow-wrap: anywhere; }
.failed { color: #a33; } [hidden] { display: none !important; }
"""

_SCRIPT = """
(function () {
  var body = document.querySelector('table.board tbody');
  var headers = document.querySelectorAll('table.board thead th');
  function key(row, col) {
    if (col === 0) return row.dataset.name;
    var v = parseFloat(row.cells[col].dataset.v);
    return isNaN(v) ? -1 : v;
  }
  headers.forEach(function (th, col) {
    th.addEventListener('click', function () {
      var down = th.dataset.dir !== 'down';
      headers.forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = down ? 'down' : 'up';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, col), y = key(b, col);
        var c = col === 0 ? (x < y ? -1 : x > y ? 1 : 0) : y - x;
        return down ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var tag = document.getElementById('tag'), text = document.getElementById('q');
  function filter() {
    var t = tag.value, q = text.value.toLowerCase(), shown = 0;
    document.querySelectorAll('[data-tags]').forEach(function (el) {
      var ok = (!t || el.dataset.tags.split(' ').indexOf(t) >= 0) && el.dataset.name.toLowerCase().indexOf(q) >= 0;
      el.hidden = !ok;
      if (ok && el.tagName === 'TR') shown++;
    });
    document.getElementById('shown').textContent = shown;
  }
  tag.addEventListener('change', filter);
  text.addEventListener('input', filter);
  document.querySelectorAll('[data-view]').forEach(function (button) {
    button.addEventListener('click', function () {
      document.querySelectorAll('[data-view]').forEach(function (b) {
        b.setAttribute('aria-pressed', b === button);
        document.getElementById(b.dataset.view).hidden = b !== button;
      });
    });
  });
  document.getElementById('cards').hidden = true;
})();
"""


def _package_name(source: str) -> str:
    """The last part of a package's source: its file or folder name, or the URL's last path segments."""
    if "://" in source:
        return source.rstrip("/").rsplit("/", 2)[-2] if source.endswith(("rdf.yaml", "bioimageio.yaml")) else source
    path = Path(source)
    return path.parent.name if path.name in ("rdf.yaml", "bioimageio.yaml") else path.name


def _colour(position: float) -> str:
    # red (last) through yellow to green (top): the rank within the target, so targets of any size compare
    return f"hsl({120 * position:.0f} 62% 78%)"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "target"


def _cell_html(cell: Cell, model: str, target: str) -> str:
    classes = ["cell", cell.status]
    if cell.tied_with_top and cell.status == "ranked":
        classes.append("top")
    if cell.saturated:
        classes.append("fg")
    if cell.status == "ranked":
        text = f"{cell.score:.2f}"
        tip = f"{model} on {target}: rank {cell.rank} of {cell.n_models}, score {cell.score:.4f}"
        tip += "; the images cannot tell it from the top model" if cell.tied_with_top else ""
        style = f" style='background-color:{_colour(cell.position or 0.0)}'"
    else:
        text = {"unscored": "n/a", "failed": "✕", "skipped": "✕", "unfit": "–", "absent": ""}[cell.status]
        tip = f"{model} on {target}: {cell.status}" + (f": {cell.reason}" if cell.reason else "")
        style = ""
    if cell.saturated:
        tip += f"; marks {cell.foreground * 100:.0f} % of the pixels as foreground: its score says little"
    value = "" if cell.position is None else f"{cell.position:.4f}"
    return f"<td class='{' '.join(classes)}' data-v='{value}' title='{_e(tip)}'{style}>{text}</td>"


def _heatmap(rows: Sequence[ModelRow], targets: Sequence[str], links: Mapping[str, str],
             flags: Mapping[str, list[str]]) -> str:
    cols = "<col class='model'><col class='mean'>" + "<col class='target'>" * len(targets)
    head = ["<th title='sort by name'>model</th>",
            "<th title='mean position over the targets it was ranked on: 100 = top everywhere'>mean</th>"]
    for t in targets:
        mark = "⚠ " if flags.get(t) else ""  # before the name: a long name is cut at its end, never the flag
        tip = f"{t}: click to sort by rank on it" + (f"; {'; '.join(flags[t])}" if flags.get(t) else "")
        head.append(f"<th class='target' title='{_e(tip)}'><span>{mark}{_e(t)}</span></th>")
    body = []
    for row in rows:
        mean = row.mean_position
        cells = "".join(_cell_html(c, row.name, t) for c, t in zip(row.cells, targets, strict=True))
        mean_text = "" if mean is None else f"{100 * mean:.0f}"
        body.append(f"<tr class='model' data-name='{_e(row.name)}' data-tags='{_e(' '.join(row.tags))}'>"
                    f"<td class='name' title='{_e(row.name)} ({_e(_package_name(row.source))})'>"
                    f"<a href='#card-{_e(_slug(row.name))}'>{_e(row.name)}</a></td>"
                    f"<td class='num' data-v='{'' if mean is None else f'{mean:.4f}'}'>{mean_text}</td>{cells}</tr>")
    links_row = "".join(f"<a href='{_e(links[t])}'>{_e(t)}</a> " for t in targets if t in links)
    return (f"<section id='heatmap'><table class='board'><colgroup>{cols}</colgroup><thead><tr>{''.join(head)}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + (f"<p class='note'>Target reports: {links_row}</p>" if links_row else "") + "</section>")


def _card(row: ModelRow, targets: Sequence[str], links: Mapping[str, str]) -> str:
    ranked, other = [], {}
    for cell, t in zip(row.cells, targets, strict=True):
        name = f"<a href='{_e(links[t])}'>{_e(t)}</a>" if t in links else _e(t)
        if cell.status in ("ranked", "unscored"):
            score = "n/a" if cell.score is None else f"{cell.score:.3f}"
            ranked.append(f"<tr><td>{name}</td><td>{cell.rank}/{cell.n_models}</td><td>{score}</td>"
                          f"<td>{_e(', '.join(cell.flags()) or cell.reason)}</td></tr>")
        elif cell.status != "absent":
            other.setdefault((cell.status, cell.reason), []).append(t)
    lines = "".join(f"<li class='{'failed' if status != 'unfit' else ''}'>"
                    f"{'does not fit' if status == 'unfit' else status} on {_e(', '.join(ts))}: {_e(reason)}</li>"
                    for (status, reason), ts in other.items())
    scored = [((c.rank or 0) / max(c.n_models, 1), c.rank, c.n_models, t)
              for c, t in zip(row.cells, targets, strict=True) if c.status == "ranked"]
    best = min(scored) if scored else None
    badge = f"<p>best: rank {best[1]} of {best[2]} on {_e(best[3])}</p>" if best else ""
    table = ("<table><tr><th>target</th><th>rank</th><th>score</th><th>flags</th></tr>" + "".join(ranked)
             + "</table>") if ranked else "<p class='note'>ranked on no target</p>"
    return (f"<article class='card' id='card-{_e(_slug(row.name))}' data-name='{_e(row.name)}' "
            f"data-tags='{_e(' '.join(row.tags))}'><h3>{_e(row.name)}</h3>"
            # the package's file name: a published page should not show the folders of the machine that ranked
            f"<div class='tags' title='{_e(row.source)}'>{_e(_package_name(row.source))}"
            + (f" · {_e(row.weights)}" if row.weights else "") + "</div>"
            + (f"<div class='tags'>tags: {_e(', '.join(row.tags))}</div>" if row.tags else "")
            + f"{badge}{table}" + (f"<ul>{lines}</ul>" if lines else "") + "</article>")


def _target_section(target: str, ranking: Mapping[str, Any], links: Mapping[str, str], flags: list[str]) -> str:
    cells = _cells_of(ranking)
    left = [(n, c) for n, (_, c) in cells.items() if c.status not in ("ranked", "unscored")]
    head = (f"{_e(target)}: {len(ranking.get('models') or [])} ranked, "
            f"{sum(c.status == 'unfit' for _, c in left)} do not fit, "
            f"{sum(c.status != 'unfit' for _, c in left)} failed or skipped")
    link = f" (<a href='{_e(links[target])}'>report</a>)" if target in links else ""
    items = "".join(f"<li>{'does not fit' if c.status == 'unfit' else c.status} {_e(n)}: {_e(c.reason)}</li>"
                    for n, c in left)
    warnings = "".join(f"<p class='failed'>⚠ {_e(w)}</p>" for w in ranking.get("warnings") or [])
    saturated = "".join(f"<p class='failed'>⚠ {_e(n)} marks {c.foreground * 100:.0f} % of the pixels as "
                        "foreground: its score says little, check its predictions</p>"
                        for n, (_, c) in cells.items() if c.saturated)
    return (f"<details id='target-{_e(_slug(target))}'{' open' if flags else ''}><summary>{head}"
            f"{' ⚠' if flags else ''}</summary>{link}{warnings}{saturated}"
            + (f"<ul>{items}</ul>" if items else "") + "</details>")


def _target_flags(ranking: Mapping[str, Any]) -> list[str]:
    flags = [str(w) for w in ranking.get("warnings") or []]
    flags += [f"{n} marks {c.foreground * 100:.0f} % of the pixels as foreground"
              for n, (_, c) in _cells_of(ranking).items() if c.saturated]
    return flags


def write_leaderboard(
    rankings: Mapping[str, Mapping[str, Any]],
    path: Path,
    *,
    links: Mapping[str, str] | None = None,
    title: str | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write the leaderboard of a zoo run as one self-contained HTML page.

    Parameters
    ----------
    rankings : mapping
        Target name -> ranking JSON (``zoo-rank``'s ``rankings/<target>.json``), in the order of the columns.
    path : Path
        The .html file to write.
    links : mapping, optional
        Target name -> link to its report (relative to ``path``), e.g. ``targets/dsb2018.html``.
    title : str, optional
        The page's heading; default: the estimator and the counts.
    tags : mapping, optional
        Model name -> its tags, for the tag filter; default: read from each model's package when it can be found.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    BioimageCteError
        No ranking given. ``WriteError`` when ``path`` cannot be written.
    """
    if not rankings:
        raise BioimageCteError(f"cannot write {path}: no rankings given; pass the rankings of a zoo run")
    links = dict(links or {})
    targets = list(rankings)
    rows = leaderboard_rows(rankings, tags=tags)
    flags = {t: _target_flags(r) for t, r in rankings.items()}
    estimators = sorted({str((r.get("settings") or {}).get("estimator", "?")) for r in rankings.values()})
    tags: dict[str, int] = {}
    for row in rows:
        for tag in row.tags:
            tags[tag] = tags.get(tag, 0) + 1
    options = "".join(f"<option value='{_e(t)}'>{_e(t)} ({n})</option>"
                      for t, n in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0])))
    heading = title or (f"bioimage-cte zoo leaderboard: {len(rows)} models x {len(targets)} targets "
                        f"({', '.join(estimators)})")
    n_cells = sum(c.status == "ranked" for r in rows for c in r.cells)
    body = [
        f"<h1>{_e(heading)}</h1>",
        f"<p class='note'>{n_cells} model x target scores. Each cell: the model's score on that target, coloured by "
        "its rank there (green: top, red: last); higher scores mean more consistent predictions under "
        "perturbation, which predicts better transfer. Generated "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by bioimage-cte "
        f"{_e(__version__)}.</p>",
        "<p class='legend note'>"
        f"<span class='sw' style='background:{_colour(1.0)}'></span>top "
        f"<span class='sw' style='background:{_colour(0.5)}'></span>middle "
        f"<span class='sw' style='background:{_colour(0.0)}'></span>last · "
        "<span class='sw' style='box-shadow: inset 0 0 0 2px #1a5d1a'></span>~top: the images cannot tell it from "
        "the top model · <span class='sw' style='background-image: repeating-linear-gradient(45deg, transparent 0 "
        "4px, rgba(160,0,0,.35) 4px 6px)'></span>marks ≥ 90 % of the pixels as foreground: its score says little · "
        "– does not fit · ✕ failed · ⚠ target flag (see below). Hover a cell for its rank and reason; click a "
        "column to sort.</p>",
        "<div class='controls'><button type='button' data-view='heatmap' aria-pressed='true'>heat map</button>"
        "<button type='button' data-view='cards' aria-pressed='false'>model cards</button>"
        f"<label>tag <select id='tag'><option value=''>all ({len(rows)})</option>{options}</select></label>"
        "<label>name <input id='q' type='search' placeholder='filter models'></label>"
        f"<span class='note'><span id='shown'>{len(rows)}</span> models shown</span></div>",
        _heatmap(rows, targets, links, flags),
        "<section id='cards'><div class='cards'>" + "".join(_card(r, targets, links) for r in rows)
        + "</div></section>",
        "<h2>Targets: what was not ranked, and flags</h2>",
        *(_target_section(t, r, links, flags[t]) for t, r in rankings.items()),
    ]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            # nothing may load from outside the file: inline styles, this page's own script, data: images
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{_e(heading)}</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    return write_atomic(Path(path), page.encode("utf-8"))
