"""What the command line shows: help at 80 columns, --version, progress lines in a log, tag matching."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bioimage_cte.cli.commands import app

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
COMMANDS = ("rank", "evaluate", "annotate", "report", "zoo-rank", "transfer-matrix", "finetune-benchmark")

_ALL_HELP = """
import contextlib, io, sys
from bioimage_cte.cli.commands import app
for args in ([], *([c] for c in sys.argv[1:])):
    print("=== " + " ".join(args))
    with contextlib.suppress(SystemExit):
        app([*args, "--help"])
"""


def test_help_fits_80_columns_without_flag_metavars_and_wraps_choices_at_bars():
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-c", _ALL_HELP, *COMMANDS], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.count("=== ") == len(COMMANDS) + 1
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "<bool>" not in out
    # a choice list breaks only right after a '|', never inside a choice
    rank_help = out.split("=== rank\n")[1].split("=== ")[0]
    column = [line for line in rank_help.splitlines() if "cte-dropout|" in line or "mc-dropout|" in line]
    assert column, rank_help
    for name in ("cte-dropout", "cte-input", "confidence", "mc-dropout", "consensus", "brightness", "contrast"):
        assert name in rank_help, f"{name} was broken across lines"


def test_version():
    from bioimage_cte.base.version import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"bioimage-cte {__version__}"


def test_plain_progress_lines_say_model_image_done_and_elapsed():
    from bioimage_cte.cli.progress import PlainProgress

    lines: list[str] = []
    progress = PlainProgress("scoring", lines.append, interval=0.0)
    progress.stage("finding models")
    progress.quiet_stage("checking 3 images")  # quick: no line of its own
    progress.plan(2, 3)
    progress.start(6)
    for model in ("a", "b"):
        progress.model(model)
        for _ in range(3):
            progress.image()
    assert lines[0] == "[0:00:00] finding models"
    assert "[0:00:00] loading model 2/2 b (3/6 images done)" in lines
    assert lines[-1].endswith("b: image 3/3, 6/6 done")
    assert all(re.match(r"\[\d+:\d\d:\d\d\] ", line) for line in lines)
    # with the default interval, images between two lines are not printed one by one
    quiet: list[str] = []
    slow = PlainProgress("scoring", quiet.append, interval=3600.0)
    slow.start(100)
    slow.model("a")
    for _ in range(99):
        slow.image()
    assert len(quiet) == 2
    slow.image()
    assert quiet[-1].endswith("100/100 done")  # the last image always says so


def _folder_package(tmp_path: Path, name: str, tags: list[str]) -> Path:
    folder = tmp_path / name
    with zipfile.ZipFile(ZOO / "nuclei-small-bright.zip") as zf:
        zf.extractall(folder)
    rdf = folder / "rdf.yaml"
    text = rdf.read_text()
    start = text.index("tags:\n")
    end = text.index("format_version:")
    rdf.write_text(text[:start] + "tags:\n" + "".join(f"  - {t}\n" for t in tags) + text[end:])
    return folder


def test_tag_matches_the_zoos_spellings_and_mixed_tasks_are_named(tmp_path):
    from bioimage_cte.base.errors import InvalidModelError
    from bioimage_cte.zoo.sources import mixed_tasks_warning, select_models

    published = _folder_package(tmp_path, "published-nucleus", ["segmentation", "nucleus", "fluorescence"])
    cells = ZOO / "cells-brightfield.zip"
    ours = ZOO / "nuclei-small-bright.zip"
    for tag in ("nuclei", "Nucleus", "nuclear"):
        assert [s.name for s in select_models([published, cells, ours], tag=tag)] == ["published-nucleus",
                                                                                      "nuclei-small-bright"]
    assert [s.name for s in select_models([published, cells, ours], tag="cell")] == ["cells-brightfield"]
    with pytest.raises(InvalidModelError, match="nor any of boundaries, boundary, membrane, membranes"):
        select_models([published, cells], tag="boundary")
    warning = mixed_tasks_warning(select_models([published, cells, ours]))
    assert warning and "cells (1), nuclei (2)" in warning and "--tag nuclei" in warning
    assert mixed_tasks_warning(select_models([published, ours])) is None


def test_progress_counts_right_with_a_budget_and_across_targets():
    from bioimage_cte.cli.progress import PlainProgress

    # a budget keeps every model loaded and scores each image with all of them in turn
    lines: list[str] = []
    budget = PlainProgress("scoring", lines.append, interval=0.0)
    budget.plan(3, 4)
    budget.start(12)
    for name in "abc":
        budget.model(name)
    for image in (1, 2):
        budget.round(image, 4)
        for _ in range(3):
            budget.image()
    assert lines[3] == "[0:00:00] loading model 3/3 c (0/12 images done)"
    assert lines[-1] == "[0:00:00] image 2/4 for each of 3 models, 6/12 done"
    # a study over targets (transfer-matrix) counts models per target, images against the whole run
    study: list[str] = []
    matrix = PlainProgress("evaluating", study.append, interval=0.0)
    matrix.start(2 * 2 * 3)
    for number, target in enumerate(("dsb2018", "tiny"), start=1):
        matrix.plan(2, 3)
        matrix.target(target, number, 2)
        for name in "ab":
            matrix.model(name)
            for _ in range(3):
                matrix.image()
    assert "[0:00:00] target 2/2 tiny" in study
    assert "[0:00:00] loading model 2/2 b on target 2/2 tiny (9/12 images done)" in study
    assert study[-1] == "[0:00:00] b: image 3/3, 12/12 done"


def test_a_run_that_makes_fewer_predictions_than_planned_says_so_at_the_end():
    from bioimage_cte.cli.progress import PlainProgress

    lines: list[str] = []
    progress = PlainProgress("scoring", lines.append, interval=3600.0)
    progress.plan(2, 4)
    progress.start(8)
    progress.model("a")
    for _ in range(4):
        progress.image()
    progress.model("keras")  # fails as it loads: none of its 4 images comes
    progress.finish()
    assert lines[-1] == ("[0:00:00] 4/8 done: the others were not made (a model failed, or a budget stopped early; "
                         "see below)")
    complete: list[str] = []
    whole = PlainProgress("scoring", complete.append, interval=3600.0)
    whole.plan(1, 2)
    whole.start(2)
    whole.model("a")
    whole.image()
    whole.image()
    whole.finish()
    assert complete[-1] == "[0:00:00] a: image 2/2, 2/2 done"  # complete: no closing line
