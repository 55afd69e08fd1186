"""The bioimage-cte command line, end to end on the demo zoo, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import typer
import yaml
from typer.testing import CliRunner

from bioimage_cte.cli.commands import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT / "resources" / "data" / "dsb2018"


def _invoke(*args: str):
    # these tests were written for the grey-box path: rank with cte-dropout unless a test names another estimator
    extra = ["--estimator", "cte-dropout"] if args[:1] == ("rank",) and "--estimator" not in args else []
    return runner.invoke(app, list(args) + extra)


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, package, instance_package) -> Path:
    """A folder with three demo packages (a small zoo keeps the CLI tests fast)."""
    folder = tmp_path_factory.mktemp("zoo")
    for p in (package, instance_package, package.parent / "weak-nuclei-undertrained.zip"):
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_help_lists_every_command_and_option_has_help():
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("rank", "evaluate", "transfer-matrix"):
        assert command in result.output
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            assert getattr(param, "help", None), f"{command.name} --{param.name} has no help"
    # the default estimator follows --tag, and the help says which (round brackets: rich drops square ones)
    for command in ("rank", "zoo-rank"):
        output = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output
        text = " ".join(output.replace("│", " ").split())
        assert "(default: tta+consensus+boundary with --tag nuclei, else tta+consensus)" in text, command


_HELP_IMPORTS = """
import contextlib, io, sys
from bioimage_cte.cli.commands import app
for args in (["--help"], ["rank", "--help"], ["evaluate", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        app(args)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "bioimageio", "prefect", "prefect_dask", "dask"})
assert not heavy, heavy
"""


def test_help_does_not_import_heavy_libraries():
    """`bioimage-cte --help` answers in about a second: no torch, bioimageio or prefect behind it (a fresh process,
    since this one has imported them already)."""
    subprocess.run([sys.executable, "-c", _HELP_IMPORTS], check=True, timeout=60)


@pytest.mark.slow
def test_rank_end_to_end_writes_json(three_models, tmp_path):
    out = tmp_path / "ranking.json"
    result = _invoke("rank", str(three_models), "--images", str(DSB / "images" / "dsb2018_0[01].tif"),
                     "--output", str(out), "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "cte-dropout ranking of 3 models on 2 images" in result.output
    payload = json.loads(out.read_text())
    assert [m["rank"] for m in payload["models"]] == [1, 2, 3]
    assert {Path(m["source"]).name for m in payload["models"]} == {p.name for p in three_models.iterdir()}
    scores = [m["score"] for m in payload["models"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    settings = payload["settings"]
    assert settings["estimator"] == "cte-dropout" and settings["strength"] == 0.2  # the default strength
    assert settings["seed"] == 1 and settings["n_images"] == 2  # --seed 1, and both images of the pattern
    assert all(m["n_images"] == 2 for m in payload["models"])


@pytest.mark.slow
def test_rank_black_box_with_input_perturbation(three_models, tmp_path):
    out = tmp_path / "ranking.json"
    result = _invoke("rank", str(three_models), "--images", str(DSB / "images" / "dsb2018_00.tif"),
                     "--estimator", "cte-input", "--perturbation", "gamma", "--strength", "0.3",
                     "--weight-format", "torchscript", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "cte-input ranking of 3 models on 1 image" in result.output
    payload = json.loads(out.read_text())
    settings = payload["settings"]
    assert (settings["estimator"], settings["kind"], settings["strength"]) == ("cte-input", "gamma", 0.3)
    assert settings["weight_format"] == "torchscript" and settings["n_images"] == 1
    assert len(payload["models"]) == 3 and payload["failures"] == []
    for model in payload["models"]:  # every model ran its torchscript weights, black-box, because it was asked to
        assert model["weights"] == {"format": "torchscript", "access": "black-box",
                                    "reason": "asked for with --weight-format"}, model["name"]


@pytest.mark.slow
def test_evaluate_prints_every_estimator_side_by_side(three_models, tmp_path):
    out = tmp_path / "evaluation.json"
    result = _invoke("evaluate", str(three_models), "--images", str(DSB / "images"), "--labels",
                     str(DSB / "labels"), "-e", "cte-dropout", "-e", "confidence", "-e", "random",
                     "--output", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload["agreement"]) == {"cte-dropout", "confidence", "random", "few-label"}
    for stats in payload["agreement"].values():
        assert -1 <= stats["spearman"] <= 1
    assert set(payload["true_performance"]) == {"nuclei-small-bright", "cells-brightfield-instance",
                                                "weak-nuclei-undertrained"}
    # the printed table: one row per estimator asked for (and the few-label reference), its columns side by side
    assert "Agreement with true dice (3 models, 4 images)" in result.stdout
    header, rows = _table(result.stdout)
    assert header == ["estimator", "ρ", "ρ 95% CI", "τ", "top-1", "regret", "picked"]
    assert list(rows) == ["cte-dropout", "confidence", "random", "few-label"]
    for name, stats in payload["agreement"].items():
        row = dict(zip(header, rows[name], strict=True))
        assert row["ρ"] == f"{stats['spearman']:.2f}" and row["τ"] == f"{stats['kendall']:.2f}", row
        assert row["top-1"] == ("yes" if stats["top1_hit"] else "no") and row["regret"] == f"{stats['regret']:.3f}"
        # the model at the top of its ranking: whole, or shortened in the middle to fit 80 columns
        start, _, end = row["picked"].partition("…")
        assert [m for m in payload["true_performance"] if m == row["picked"] or (end and m.startswith(start)
                                                                                and m.endswith(end))], row


def _table(output: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (first column -> cells) of the rich table printed in ``output``; a row whose
    cells wrap over several lines is joined again."""
    header: list[str] = []
    rows: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                last = rows[cells[0]] = cells
            elif last is not None:  # a continuation line of the row above
                last[:] = [a + b for a, b in zip(last, cells, strict=True)]
    return header, rows


def test_empty_image_folder_is_one_line_naming_the_folder(three_models, tmp_path):
    result = _invoke("rank", str(three_models), "--images", str(tmp_path))
    assert result.exit_code == 1
    assert str(tmp_path) in result.output and "no images" in result.output
    assert "Traceback" not in result.output


def test_brackets_in_paths_and_reasons_are_printed_as_they_are(three_models, tmp_path):
    # rich markup would eat "[run-1]" (and the extra in "pip install 'bioimage-cte[onnx]'") without escaping
    empty = tmp_path / "images[run-1]"
    empty.mkdir()
    result = _invoke("rank", str(three_models), "--images", str(empty))
    assert result.exit_code == 1 and f"no images found in {empty}:" in result.output.replace("\n", "")


def test_image_whose_axes_do_not_fit(three_models, tmp_path):
    bad = tmp_path / "volume.tif"
    tifffile.imwrite(bad, np.zeros((2, 3, 64, 64), np.float32))
    result = _invoke("rank", str(three_models), "--images", str(bad))
    assert result.exit_code == 1
    assert str(bad) in result.output and "--axes" in result.output


@pytest.mark.slow
def test_model_that_is_not_a_segmentation_model_is_recorded_and_others_rank(three_models, tmp_path, package):
    folder = tmp_path / "zoo"
    folder.mkdir()
    for p in three_models.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(folder / "regression.zip", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "rdf.yaml":  # an image-to-image model: no sigmoid, no segmentation tag
                rdf = yaml.safe_load(data)
                rdf["outputs"][0]["postprocessing"] = rdf["outputs"][0]["postprocessing"][1:]
                rdf["tags"] = [t for t in rdf["tags"] if t != "segmentation"] + ["denoising"]
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
    result = _invoke("rank", str(folder), "--images", str(DSB / "images" / "dsb2018_00.tif"))
    assert result.exit_code == 0, result.output
    assert "failed regression" in result.output and "probability map" in result.output
    assert "regression" in result.output
    assert "ranking of 3 models on 1 image; 1 failed" in result.output  # counted apart from the ranked


@pytest.mark.slow
def test_installed_console_script_runs():
    exe = Path(sys.executable).parent / "bioimage-cte"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "rank" in result.stdout


@pytest.mark.slow
def test_tag_keeps_only_models_for_the_task(three_models, tmp_path):
    out = tmp_path / "ranking.json"
    result = _invoke("rank", str(three_models), "--images", str(DSB / "images" / "dsb2018_00.tif"),
                     "--tag", "nuclei", "--estimator", "confidence", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "confidence ranking of 2 models" in result.output and "cells-brightfield-instance" not in result.output
    payload = json.loads(out.read_text())
    assert payload["settings"]["tag"] == "nuclei" and payload["settings"]["estimator"] == "confidence"
    assert sorted(m["name"] for m in payload["models"]) == ["nuclei-small-bright", "weak-nuclei-undertrained"]
    result = _invoke("rank", str(three_models), "--images", str(DSB / "images"), "--tag", "plants")
    assert result.exit_code == 1 and "plants" in result.output


@pytest.mark.slow
def test_rank_then_annotate_then_report(three_models, tmp_path):
    from bioimage_cte.outputs.annotate import read_transferability

    ranking = tmp_path / "ranking.json"
    images = str(DSB / "images" / "dsb2018_00.tif")
    result = _invoke("rank", str(three_models), "--images", images, "--output", str(ranking))
    assert result.exit_code == 0, result.output
    before = {p.name: p.read_bytes() for p in three_models.iterdir()}
    result = _invoke("annotate", str(ranking), "--target", "dsb2018", "--images", images,
                     "--output", str(tmp_path / "annotated"))
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in three_models.iterdir()} == before  # originals untouched
    annotated = sorted((tmp_path / "annotated").rglob("*.zip"))
    assert len(annotated) == 3
    entries = read_transferability(annotated[0])
    assert [e["target"] for e in entries] == ["dsb2018"] and entries[0]["n_models"] == 3
    html = tmp_path / "ranking.html"
    result = _invoke("report", str(ranking), "--images", images, "--output", str(html),
                     "--zoo-reports", str(tmp_path / "reports"), "--target", "dsb2018")
    assert result.exit_code == 0, result.output
    assert html.read_text().count("data:image/png;base64") >= 2
    assert len(list((tmp_path / "reports").rglob("bioimage-cte_*.json"))) == 3
    # --target names the ranking the zoo reports are written for
    published = json.loads((tmp_path / "reports" / "rankings" / "dsb2018.json").read_text())
    local = json.loads(ranking.read_text())
    assert [m["name"] for m in published["models"]] == [m["name"] for m in local["models"]]
    assert [m["score"] for m in published["models"]] == [m["score"] for m in local["models"]]
    assert str(ROOT) not in json.dumps(published)  # meant for publication: no folder of this machine
