"""Output that survives a log: every command's output, rendered at 80 columns into a file, keeps each path and each
model name whole; and the zoo run's leaderboard renders in a real browser.

One sandbox with deliberately long paths runs rank, evaluate, report --zoo-reports, annotate, zoo-rank and report on
a folder of rankings, as a user would from a shell with their output redirected to a file (not a terminal).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"
#: a long model name (the issue's example) beside two short ones
MODELS = ("nuclei-dim-blurry-torchscript", "nuclei-small-bright", "weak-nuclei-tiny")
TARGETS = ("dsb2018", "nuclei-tiny-crowded")
CROP = 96
WIDTH = 80

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A zoo of three packages and two short targets, under a folder name long enough to break any 80-column line."""
    import tifffile

    root = tmp_path_factory.mktemp("cli80") / "a-rather-long-folder-name-so-that-every-path-is-wider-than-a-log"
    zoo = root / "zoo"
    zoo.mkdir(parents=True)
    for name in MODELS:
        shutil.copy(ZOO / f"{name}.zip", zoo)
    for target in TARGETS:
        dest = root / "targets" / target
        for sub in ("images", "labels"):
            (dest / sub).mkdir(parents=True)
        shutil.copy(DATA / target / "target.yaml", dest)
        for sub in ("images", "labels"):
            for path in sorted((DATA / target / sub).glob("*.tif"))[:2]:
                tifffile.imwrite(dest / sub / path.name, tifffile.imread(path)[..., :CROP, :CROP])
    return root


def _run(sandbox: Path, name: str, *args: object) -> str:
    """Run ``bioimage-cte ARGS`` with standard output and error redirected to one file, as in ``cmd > log 2>&1``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(COLUMNS=str(WIDTH), TERM="dumb", TQDM_DISABLE="1", HOME=str(sandbox / "home"),
               PREFECT_HOME=str(sandbox / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    log = sandbox / f"{name}.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "bioimage_cte.cli", *map(str, args)], cwd=sandbox, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False)
    text = log.read_text()
    assert done.returncode == 0, text[-4000:]
    assert "Traceback" not in text
    return text


def _paths_are_whole(text: str, sandbox: Path) -> None:
    """Every path printed (every token under the sandbox) names a file or folder that exists: none is cut."""
    tokens = [t.strip("()[],;:'\"") for t in text.split()]
    printed = [t for t in tokens if t.startswith(str(sandbox.parent))]
    assert printed, "no path printed"
    for token in printed:
        assert Path(token).exists(), f"{token!r} is a broken path"
    for line in text.splitlines():  # nor does a line start with the rest of a path cut at the end of the last one
        assert not re.match(r"^[\w.-]*/[\w./-]+\.(json|html|yaml|zip|csv)\b", line), line


def _names_are_whole(text: str, names: list[str]) -> None:
    """In every table, each model name is in a cell whole or abbreviated in the middle (``start…end``, a start and an
    end of the name), never cut at its end or broken over two lines; and the tables fit the width."""
    rows = [line for line in text.splitlines() if line.startswith(("│", "┃", "┏", "┡", "└", "├"))]
    assert rows, "no table printed"
    assert all(len(line) <= WIDTH for line in rows), "\n".join(rows)
    cells = [c.strip() for line in rows if line.startswith("│") for c in line.strip("│").split("│")]
    for name in names:
        whole = name in cells
        shortened = [c for c in cells if "…" in c and c.count("…") == 1 and name.startswith(c.split("…")[0])
                     and name.endswith(c.split("…")[1]) and min(map(len, c.split("…"))) >= 3]
        assert whole or shortened, f"{name} is not in a table cell whole:\n" + "\n".join(rows)
    headers = [c.strip() for line in rows if line.startswith("┃") for c in line.strip("┃").split("┃")]
    for cell in cells + headers:  # no other cut: an ellipsis only ever stands inside a name
        assert not cell.endswith("…"), "\n".join(rows)


def test_rank_evaluate_report_annotate_keep_paths_and_names_whole(sandbox):
    zoo, dsb = sandbox / "zoo", sandbox / "targets" / "dsb2018"
    out = sandbox / "results" / "new-folder"
    ranking = out / "ranking-of-the-demo-packages.json"
    text = _run(sandbox, "rank", "rank", zoo, "--images", dsb / "images", "-o", ranking)
    payload = json.loads(ranking.read_text())
    names = [m["name"] for m in payload["models"]]
    assert sorted(names) == sorted(MODELS)
    assert f"ranking written to {ranking} (created the folder {sandbox / 'results'})" in text
    _paths_are_whole(text, sandbox)
    _names_are_whole(text, names)

    text = _run(sandbox, "evaluate", "evaluate", zoo, "--images", dsb / "images", "--labels", dsb / "labels",
                "-e", "tta", "-e", "confidence", "--few-label", "0", "-o", out / "evaluation.csv")
    picked = [line.split(",")[-1] for line in (out / "evaluation.csv").read_text().splitlines()[1:]]
    assert picked and all(p in MODELS for p in picked)
    _paths_are_whole(text, sandbox)
    _names_are_whole(text, picked)

    published = sandbox / "published"
    text = _run(sandbox, "report", "report", ranking, "--zoo-reports", published, "--target", "dsb2018",
                "--report-images", "0", "-o", out / "report.html")
    written = [p for p in published.rglob("*.json")]
    assert len(written) == len(MODELS) + 1
    for path in written:  # every file it wrote is named, whole
        assert f"zoo report written to {path}" in text
    _paths_are_whole(text, sandbox)

    annotated = sandbox / "annotated"
    text = _run(sandbox, "annotate", "annotate", ranking, "--target", "dsb2018", "--images", dsb / "images",
                "--output", annotated)
    for path in annotated.iterdir():
        if path.suffix == ".zip":
            assert f"annotated {path}" in text
    _paths_are_whole(text, sandbox)


def test_zoo_rank_ends_with_a_table_and_a_leaderboard_a_browser_renders(sandbox, tmp_path):
    from test_leaderboard import CHROMIUM, render

    output = sandbox / "zoo-run"
    text = _run(sandbox, "zoo-rank", "zoo-rank", sandbox / "zoo", *(sandbox / "targets" / t for t in TARGETS),
                "--output-dir", output, "--store", sandbox / "results.sqlite")
    rankings = {t: json.loads((output / "rankings" / f"{t}.json").read_text()) for t in TARGETS}
    names = sorted({m["name"] for r in rankings.values() for m in r["models"]})
    assert names == sorted(MODELS)
    # the compact table: each target's top 3 with their scores
    assert "top 3 per target (tta)" in text
    for target, ranking in rankings.items():
        assert f"│ {target}" in text and f"{len(ranking['models'])} ranked" in text
        assert f"{ranking['models'][0]['score']:.3f}" in text
    leaderboard = output / "leaderboard.html"
    assert f"leaderboard (every model on every target) written to {leaderboard}" in text
    _paths_are_whole(text, sandbox)
    _names_are_whole(text, names)

    # report on the folder of rankings writes the same page elsewhere
    again = sandbox / "site" / "board.html"
    text = _run(sandbox, "report-folder", "report", output / "rankings", "-o", again)
    assert again.is_file() and (again.parent / "targets" / "dsb2018.html").is_file()
    _paths_are_whole(text, sandbox)

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/test.sh installs it: apt-get install chromium)")
    seen = render(leaderboard, tmp_path)
    assert (seen["rows"], seen["cells"], seen["cards"]) == (len(MODELS), len(MODELS) * len(TARGETS), len(MODELS))
    assert seen["width"] <= seen["client"], seen
