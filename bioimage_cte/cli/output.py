"""What the ``bioimage-cte`` command line prints: help laid out for 80 columns, and the result tables.

Rendering only: the numbers come from the library (:mod:`bioimage_cte.run.pipeline`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

err_console = Console(stderr=True)


def say(label: str, text: str) -> None:
    """One line on standard error: a rich-markup ``label``, then ``text`` as it is (paths and reasons may hold
    brackets, e.g. ``pip install 'bioimage-cte[onnx]'``, which rich would otherwise take for markup)."""
    err_console.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)


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


def ranking_table(ranking, title: str) -> Table:
    from bioimage_cte.run.ranking import interval_label

    n = max((s.n_valid for s in ranking.scores), default=0)
    caption = (f"Higher score = predictions more stable under perturbation = expected to transfer better. "
               f"interval: {interval_label(n)}. ~top: the images cannot tell this model from the top one "
               "(paired bootstrap).")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column, justify in (("rank", "right"), ("model", "left"), ("score", "right"), ("interval", "right"),
                            ("~top", "left"), ("images", "right"), ("note", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for s in ranking.scores:
        score = "n/a" if s.score != s.score else f"{s.score:.3f}"
        lo, hi = s.interval
        interval = "-" if lo != lo or hi != hi else f"{lo:.3f}-{hi:.3f}"
        images = str(s.n_images) if not s.n_empty else f"{s.n_images} ({s.n_empty} empty)"
        table.add_row(str(s.rank), s.name, score, interval, "yes" if s.tied_with_top else "", images, s.note)
    return table


def print_failures(failures) -> None:
    for f in failures:
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


def agreement_table(evaluation, n_models: int, n_images: int) -> Table:
    # 80 columns: pearson and weighted tau are in --output (CSV/JSON), not on the terminal
    table = Table(title=f"Agreement with true {evaluation.metric} ({n_models} models, {n_images} images)",
                  title_justify="left", caption="spearman, kendall: rank correlation with the true ranking (1 = "
                  "same order); top-1: picked the truly best model; regret: true score lost by taking the pick.",
                  caption_justify="left")
    for column in ("estimator", "spearman", "95% CI", "kendall", "top-1", "regret", "picked"):
        table.add_column(column, justify="left" if column in ("estimator", "picked") else "right", overflow="fold")
    for row in agreement_rows(evaluation):
        ci = "-" if row["spearman_ci_low"] is None else f"{row['spearman_ci_low']:.2f}..{row['spearman_ci_high']:.2f}"
        table.add_row(row["estimator"], f"{row['spearman']:.2f}", ci, f"{row['kendall']:.2f}",
                      "yes" if row["top1_hit"] else "no", f"{row['regret']:.3f}", row["picked"] or "-")
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
