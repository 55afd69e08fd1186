"""What the ``bioimage-cte`` command line prints: help laid out for 80 columns, and the result tables.

Rendering only: the numbers come from the library (:mod:`bioimage_cte.run.pipeline`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

err_console = Console(stderr=True)


def say(label: str, text: str) -> None:
    """One line on standard error: a rich-markup ``label``, then ``text`` as it is (paths and reasons may hold
    brackets, e.g. ``pip install 'bioimage-cte[onnx]'``, which rich would otherwise take for markup)."""
    err_console.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)


def tell(console: Console, text: str) -> None:
    """One message, printed as it is and never wrapped: a path broken over two lines cannot be copied from a log."""
    console.print(escape(text), highlight=False, soft_wrap=True)


def new_folder(path: Path | str | None) -> Path | None:
    """The outermost folder that writing ``path`` will create because it does not exist yet, or None.

    Call it before anything is written; the message that names the written file then names this folder too.

    Examples
    --------
    >>> new_folder("/nonexistent-bioimage-cte/dir/r.json")
    PosixPath('/nonexistent-bioimage-cte')
    >>> new_folder("r.json") is None
    True
    """
    if path is None or str(path) == "-":
        return None
    top = None
    parent = Path(path).expanduser().absolute().parent
    while not parent.exists() and parent != parent.parent:
        top, parent = parent, parent.parent
    return top


def tell_written(console: Console, what: str, path: Path | str, created: Path | None = None) -> None:
    """``<what> written to <path>``, naming the folder that was created for it, if any."""
    tell(console, f"{what} written to {path}" + (f" (created the folder {created})" if created else ""))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from bioimage_cte.base.fileutils import write_atomic

    write_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


def wrap_choices(choices: Sequence[str], width: int = 12) -> str:
    """A choice list as lines of at most ``width`` characters, broken only after a ``|`` (help at 80 columns)."""
    lines, line = [], ""
    for i, choice in enumerate(choices):
        piece = choice + ("|" if i < len(choices) - 1 else "")
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join([*lines, line])


def readable_metavars(params: Sequence[Any]) -> None:
    for param in params:
        # typer 0.2x vendors click: its parameters are told apart by what they have, not by click's classes
        descriptor = getattr(param, "type_descriptor", None)
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif descriptor is not None and descriptor.is_choice and param.metavar is None:
            param.metavar = wrap_choices([str(getattr(c, "value", c)) for c in descriptor.choices or ()])


class ReadableHelp(TyperGroup):
    """Every command's help reads well at 80 columns: no ``<bool>`` after a flag, choice lists wrap at ``|``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        readable_metavars(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            readable_metavars(command.get_params(ctx))
        return command


#: A name column is never abbreviated below this many characters (the table wraps other columns instead).
MIN_NAME = 16
ELLIPSIS = "…"


def plural(n: int, word: str) -> str:
    """``"1 model"``, ``"3 models"``.

    Examples
    --------
    >>> plural(1, "model"), plural(0, "image")
    ('1 model', '0 images')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def abbreviate(name: str, width: int) -> str:
    """``name`` shortened in the middle to ``width`` characters, so both its start and its end stay readable.

    Examples
    --------
    >>> abbreviate("nuclei-dim-blurry-torchscript", 20)
    'nuclei-dim…rchscript'
    >>> abbreviate("short", 20)
    'short'
    """
    if len(name) <= width:
        return name
    keep = max(width - 1, 2)
    head = (keep + 1) // 2
    return name[:head] + ELLIPSIS + name[len(name) - (keep - head):]


def fit_names(rows: list[list[str]], headers: Sequence[str], names: Sequence[int], width: int) -> list[list[str]]:
    """Rows whose name columns are abbreviated in the middle, only as far as a boxed table of them needs to fit
    ``width`` columns (names are never wrapped: a name broken over two lines cannot be copied).

    The widest name column gives way first, one character at a time, down to :data:`MIN_NAME` (or its header);
    below that every name column shrinks in turn, to 6 characters at the least.

    Examples
    --------
    >>> fit_names([["1", "nuclei-dim-blurry-torchscript"]], ["rank", "model"], [1], 30)
    [['1', 'nuclei-di…rchscript']]
    >>> fit_names([["confidence", "0.50", "nuclei-dim-blurry-torchscript"]], ["estimator", "rho", "picked"],
    ...           [0, 2], 40)
    [['confidence', '0.50', 'nuclei-d…hscript']]
    """
    chrome = 3 * len(headers) + 1  # a border and one space either side per column, and the closing border
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    budget = width - chrome - sum(w for i, w in enumerate(natural) if i not in names)
    limits = {i: natural[i] for i in names}
    for floor in (MIN_NAME, 6):
        while sum(limits.values()) > budget:
            widest = max(limits, key=lambda i: limits[i])
            if limits[widest] <= max(floor, len(headers[widest]) if floor == MIN_NAME else floor):
                break
            limits[widest] -= 1
    return [[abbreviate(c, limits[i]) if i in limits else c for i, c in enumerate(r)] for r in rows]


def ranking_headline(ranking, n_images: int) -> str:
    """What was ranked, what did not fit and what failed, counted separately.

    The table holds the ranked models (a model without a valid score among them, last); the others are listed
    after it, one line each.
    """
    counts: dict[str, int] = {}
    for f in ranking.failures:
        counts[str(f.stage)] = counts.get(str(f.stage), 0) + 1
    unfit, skipped = counts.pop("unfit", 0), counts.pop("skipped", 0)
    failed = sum(counts.values())
    text = f"{ranking.estimator} ranking of {plural(len(ranking.scores), 'model')} on {plural(n_images, 'image')}"
    extra = [f"{unfit} {'does' if unfit == 1 else 'do'} not fit these images" if unfit else "",
             f"{skipped} skipped (package code not allowed)" if skipped else "",
             f"{failed} failed" if failed else ""]
    extra = [e for e in extra if e]
    return text + ("; " + ", ".join(extra) if extra else "")


def predicted_cell(predicted) -> str:
    """``0.91 (0.84-0.98)``, ``n/a`` when withheld, ``~`` marking a widened interval."""
    if predicted is None or predicted.estimate is None:
        return "n/a" if predicted is not None else ""
    lo, hi = predicted.interval
    return f"{predicted.estimate:.2f} ({lo:.2f}-{hi:.2f}){'~' if predicted.note else ''}"


def dice_summary(ranking, *, good_enough: float = 0.7) -> str | None:
    """The best model's predicted Dice and interval; advice to label and fine-tune when even its upper bound is low.

    None when the run has no predicted Dice (no calibration).
    """
    top = next((s for s in ranking.scores if s.score == s.score), None)
    if top is None or top.predicted is None:
        return None
    p = top.predicted
    if p.estimate is None:
        return f"{top.name}: no predicted Dice ({p.note})"
    lo, hi = p.interval
    text = f"{top.name} is expected to reach Dice {p.estimate:.2f} on these images (90 % interval {lo:.2f}-{hi:.2f})"
    if p.note:
        text += f"; {p.note}"
    if hi < good_enough:
        text += (f". Even the interval's upper bound is below {good_enough:g}: label a few images and fine-tune "
                 "(on the demo targets one labelled image and 60 steps lifted the worst zero-shot model from Dice "
                 "0.48 to 0.87 on dsb2018 and from 0.01 to 0.85 on nuclei-tiny-crowded, "
                 "benchmarks/results/finetune.md): 'bioimage-cte finetune MODEL --images ... --labels ... -o "
                 "finetuned.zip'")
    return text + "."


def ranking_table(ranking, title: str, *, width: int = 80) -> Group:
    """The ranking as a table that fits ``width`` columns, with each model's note on its own line below it."""
    from rich.text import Text

    from bioimage_cte.run.ranking import interval_label

    n = max((s.n_valid for s in ranking.scores), default=0)
    meaning = "Higher score = predictions more stable under perturbation = expected to transfer better. "
    if ranking.estimator == "tta+consensus":
        meaning = ("Score = median over the images of each image's predicted Dice, from its stability under flips "
                   "and rotations and its agreement with the candidates' majority vote. "
                   if "weights" in ranking.settings else
                   "Higher score = higher mean rank among these candidates (0-1) by stability under flips and "
                   "rotations and by agreement with the candidates' majority vote = expected to transfer better. ")
    if ranking.estimator == "tta+consensus+boundary":
        meaning = ("Score = weighted sum of medians over the images: stability under flips and rotations, agreement "
                   "with the candidates' majority vote, and how well each mask's boundary follows the image's edges. ")
    caption = (f"{meaning}"
               f"interval: {interval_label(n)}. ~top: the images cannot tell this model from the top one "
               "(paired bootstrap).")
    headers = ["rank", "model", "score", "interval", "~top", "images", "Dice (90 %)", "note"]
    rows, notes = [], []
    for s in ranking.scores:
        score = "n/a" if s.score != s.score else f"{s.score:.3f}"
        lo, hi = s.interval
        interval = "-" if lo != lo or hi != hi else f"{lo:.3f}-{hi:.3f}"
        images = str(s.n_images) if not s.n_empty else f"{s.n_images} ({s.n_empty} empty)"
        mark = ""
        if s.note:
            notes.append(f"({len(notes) + 1}) {s.name}: {s.note}")
            mark = f"({len(notes)})"
        rows.append([str(s.rank), s.name, score, interval, "yes" if s.tied_with_top else "", images,
                     predicted_cell(s.predicted), mark])
    if not notes:  # a column of nothing only takes room from the names
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    if all(s.predicted is None for s in ranking.scores):  # no calibration in this run
        headers, rows = headers[:6] + headers[7:], [row[:6] + row[7:] for row in rows]
    else:
        caption += " Dice: predicted from these signals (no labels), with its 90 % interval."
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in headers:
        table.add_column(column, justify="left" if column in ("model", "~top", "note") else "right", no_wrap=True)
    for row in fit_names(rows, headers, [1], width):
        table.add_row(*row)
    return Group(table, *(Text(note) for note in notes))


def zoo_table(summaries, estimator: str, *, top: int = 3, width: int = 80) -> Table:
    """A zoo run per target: its best ``top`` models with score and flags, and (under the target's name) the first
    model's predicted Dice and how many were ranked, did not fit and failed."""
    headers = ["target", "#", "model", "score", "flags"]
    rows: list[list[str]] = []
    ends: list[int] = []
    for s in summaries:
        under = [s.name, s.best_dice, f"{s.n_ranked} ranked", f"{s.n_unfit} do not fit" if s.n_unfit else "",
                 f"{s.n_failed} failed" if s.n_failed else "", *s.flags]
        under = [u for u in under if u]
        best = [[str(rank), name, "n/a" if score is None else f"{score:.3f}", " ".join(flags)]
                for rank, name, score, flags in s.top] or [["", "(no model ranked)", "", ""]]
        for i in range(max(len(best), len(under))):
            rows.append([under[i] if i < len(under) else "", *(best[i] if i < len(best) else ["", "", "", ""])])
        ends.append(len(rows))
    table = Table(title=f"top {top} per target ({estimator})", title_justify="left",
                  caption="~top: the images cannot tell it from the top model; fg: share of pixels marked "
                          "foreground (90 % or more: the score says little, check its predictions); Dice: the "
                          "first model's predicted Dice, 90 % interval",
                  caption_justify="left")
    for column in headers:
        table.add_column(column, justify="right" if column in ("#", "score") else "left", no_wrap=True)
    for i, row in enumerate(fit_names(rows, headers, [0, 2], width), start=1):
        table.add_row(*row, end_section=i in ends)
    return table


def transfer_table(summary: dict[str, dict[str, Any]], *, width: int = 80) -> Table:
    """The transfer matrix per target: best and worst model with their foreground Dice, the median and the spread."""
    headers = ["target", "best", "model", "median", "worst", "model", "spread"]
    rows = [[target, f"{s['best']:.3f}", str(s["best_model"]), f"{s['median']:.3f}", f"{s['worst']:.3f}",
             str(s["worst_model"]), f"{s['best'] - s['worst']:.3f}"] for target, s in summary.items()]
    table = Table(title="Foreground Dice per target", title_justify="left")
    for column in headers:
        table.add_column(column, justify="left" if column in ("target", "model") else "right", no_wrap=True)
    for row in fit_names(rows, headers, [0, 2, 5], width):
        table.add_row(*row)
    return table


def print_failures(failures) -> None:
    """One line per model that was not ranked: ``does not fit``, ``skipped`` (code not allowed) or ``failed``."""
    for f in failures:
        if f.stage == "unfit":
            say("[dim]does not fit[/]", f"{f.name}: {f.reason}")
        else:
            what = "skipped" if f.stage == "skipped" else "failed"
            say(f"[yellow]{what}[/]", f"{f.name} ({f.stage}): {f.reason}")


_AGREEMENT_COLUMNS = ("estimator", "pearson", "spearman", "spearman_ci_low", "spearman_ci_high", "kendall",
                      "weighted_tau", "top1_hit", "regret", "picked")


def agreement_rows(evaluation) -> list[dict[str, Any]]:
    rows = []
    for name, a in evaluation.agreement.items():
        ci = a.spearman_ci or (None, None)
        rows.append({"estimator": name, "pearson": a.pearson, "spearman": a.spearman, "spearman_ci_low": ci[0],
                     "spearman_ci_high": ci[1], "kendall": a.kendall, "weighted_tau": a.weighted_tau,
                     "top1_hit": a.top1_hit, "regret": a.regret,
                     "picked": evaluation.rankings[name].scores[0].name if evaluation.rankings[name].scores else ""})
    return rows


def write_evaluation(evaluation, path: Path) -> None:
    """The evaluation as CSV (one row per estimator, every agreement column) or, for any other suffix, JSON."""
    if path.suffix.lower() != ".csv":
        _write_json(path, evaluation.to_json_dict())
        return
    import csv
    import io

    from bioimage_cte.base.fileutils import write_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_AGREEMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(agreement_rows(evaluation))
    write_atomic(path, buffer.getvalue().encode())


def agreement_table(evaluation, n_models: int, n_images: int, *, width: int = 80) -> Table:
    # 80 columns: pearson and weighted tau are in --output (CSV/JSON), not on the terminal
    table = Table(title=f"Agreement with true {evaluation.metric} ({plural(n_models, 'model')}, "
                        f"{plural(n_images, 'image')})",
                  title_justify="left", caption="ρ (Spearman), τ (Kendall): rank correlation with the true ranking "
                  "(1 = same order); top-1: picked the truly best model; regret: true score lost by taking the pick; "
                  "picked: the top of the estimator's ranking (full names in --output).",
                  caption_justify="left")
    # short headers for the numbers leave the room to the names
    headers = ["estimator", "ρ", "ρ 95% CI", "τ", "top-1", "regret", "picked"]
    for column in headers:
        table.add_column(column, justify="left" if column in ("estimator", "picked") else "right", no_wrap=True)
    rows = []
    for row in agreement_rows(evaluation):
        ci = "-" if row["spearman_ci_low"] is None else f"{row['spearman_ci_low']:.2f}..{row['spearman_ci_high']:.2f}"
        rows.append([row["estimator"], f"{row['spearman']:.2f}", ci, f"{row['kendall']:.2f}",
                     "yes" if row["top1_hit"] else "no", f"{row['regret']:.3f}", row["picked"] or "-"])
    for row in fit_names(rows, headers, [0, 6], width):
        table.add_row(*row)
    return table


def finetune_table(payload: dict[str, Any]) -> Table:
    table = Table(title=f"Fine-tuning ({payload['config']['steps']} steps; k = 0 is zero-shot)", title_justify="left")
    for column in ("k", "models", "best", "best model", "spread", "best scratch", "Spearman(CTE, Dice)", "top-1",
                   "steps to 95%"):
        table.add_column(column, justify="left" if column in ("k", "best model") else "right")
    for s in payload["summary"]:
        table.add_row(s["k"], str(s["n_models"]), f"{s['best']:.3f}", s["best_model"], f"{s['spread']:.3f}",
                      "-" if s["scratch_dice"] is None else f"{s['scratch_dice']:.3f}",
                      "-" if s["spearman"] is None else f"{s['spearman']:.2f}",
                      "-" if s["top1_hit"] is None else ("yes" if s["top1_hit"] else "no"),
                      f"{s['mean_steps_to_95']:.0f}")
    return table
