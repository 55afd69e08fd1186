"""The predicted Dice: its calibration fitted on the shipped transfer matrices, its support rules, its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bioimage_cte.cte.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    CalibrationRow,
    conformal_half_width,
    fit_calibration,
    leave_one_target_out,
    load_calibration,
)
from bioimage_cte.studies.calibration import calibrate, calibration_rows, read_signals

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "resources" / "calibration"
MATRICES = [ROOT / "resources" / "zoo" / "transfer_matrix.csv", CAL / "transfer_matrix_held_out.csv"]


@pytest.fixture(scope="module")
def rows() -> list[CalibrationRow]:
    return calibration_rows(read_signals(CAL / "signals.csv"), MATRICES)


def test_the_shipped_calibration_meets_the_issue_bars_leaving_each_target_out(rows):
    assert len({r.target for r in rows}) == 40 and len(rows) == 270
    check = leave_one_target_out(rows, ("tta", "consensus"), top_signal="tta")
    assert check["mae_top"] <= 0.08 and check["mae"] <= 0.12
    assert check["coverage"] >= 0.85
    # and it is far better than predicting the calibration set's mean Dice
    assert check["mae"] < check["trivial_mae"] / 2


def test_the_shipped_file_is_what_calibrate_refits_from_the_shipped_files(tmp_path):
    written = calibrate(CAL / "signals.csv", MATRICES, tmp_path / "cal.json")
    shipped = load_calibration()
    assert shipped is not None and shipped.fits == written.fits and shipped.ranges == written.ranges
    payload = json.loads(DEFAULT_CALIBRATION.read_text())
    assert payload["format"] == 1 and payload["fitted_on"]["pairs"] == 270
    assert {f["path"] for f in payload["fitted_on"]["files"]} == {"signals.csv", "transfer_matrix.csv",
                                                                 "transfer_matrix_held_out.csv"}


def test_consensus_and_tta_predict_a_good_and_a_poor_model_apart():
    cal = load_calibration()
    good = cal.predict({"tta": 0.95, "consensus": 0.93, "foreground": 0.2}, task="nuclei")
    poor = cal.predict({"tta": 0.80, "consensus": 0.55, "foreground": 0.1}, task="nuclei")
    assert good.estimate > 0.85 > poor.estimate + 0.2
    lo, hi = good.interval
    assert lo < good.estimate < hi and good.note == ""
    assert good.features == ("tta", "consensus")
    # without the consensus (fewer than 3 candidates) it falls back on tta alone, with a wider interval
    alone = cal.predict({"tta": 0.95, "foreground": 0.2}, task="nuclei")
    assert alone.features == ("tta",) and alone.interval[1] - alone.interval[0] > hi - lo


def test_outside_the_support_the_interval_widens_or_the_estimate_is_withheld():
    cal = load_calibration()
    signals = {"tta": 0.95, "consensus": 0.93, "foreground": 0.2}
    base = cal.predict(signals, task="nuclei")
    other = cal.predict(signals, task="membrane")
    assert other.estimate == base.estimate and "not calibrated" in other.note
    assert other.interval[1] - other.interval[0] > base.interval[1] - base.interval[0]
    out = cal.predict({**signals, "tta": 0.02}, task="nuclei")
    assert "outside the calibrated range" in out.note
    three_d = cal.predict(signals, task="nuclei", volumetric=True)
    assert three_d.estimate is None and three_d.interval is None and "3D" in three_d.note
    none = cal.predict({"foreground": 0.2}, task="nuclei")
    assert none.estimate is None and "withheld" in none.note


def test_conformal_half_width_is_the_finite_sample_quantile():
    assert conformal_half_width([0.05] * 8, 0.9) == math.inf  # 8 residuals cannot back a 90 % interval
    assert conformal_half_width([float(i) for i in range(1, 11)] + [100.0] * 9, 0.9) == 100.0
    assert conformal_half_width([float(i) for i in range(1, 100)], 0.9) == 90.0


def test_a_calibration_of_another_format_is_refused_with_the_refit_command(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": 0}))
    with pytest.raises(Exception, match="bioimage-cte calibrate"):
        load_calibration(path)
    assert Calibration.from_json_dict(json.loads(DEFAULT_CALIBRATION.read_text())).tasks == (
        "cells", "mitochondria", "nuclei")


def test_fitting_needs_three_targets():
    rows = [CalibrationRow(f"t{i % 2}", f"m{i}", "nuclei", {"tta": i / 10, "consensus": i / 10}, i / 10)
            for i in range(8)]
    with pytest.raises(ValueError, match="at least 3 targets"):
        fit_calibration(rows)


@pytest.mark.slow
def test_a_ranking_gives_every_model_its_predicted_dice_in_the_json_the_table_the_report_and_the_card(tmp_path):
    from bioimage_cte.cli.output import dice_summary, ranking_table
    from bioimage_cte.outputs.annotate import entries_from_ranking
    from bioimage_cte.outputs.reports import write_html_report
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    zoo = ROOT / "resources" / "zoo"
    images = sorted((ROOT / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))
    models = [zoo / f"{n}.zip" for n in ("nuclei-versatile", "nuclei-small-bright", "weak-nuclei-large-only")]
    run = rank(models, images, RankOptions(tag="nuclei"))
    payload = run.to_json_dict(images=str(images[0].parent))
    by_name = {m["name"]: m for m in payload["models"]}
    true = {"nuclei-versatile": 0.926, "nuclei-small-bright": 0.898, "weak-nuclei-large-only": 0.553}
    for name, dice in true.items():
        m = by_name[name]
        lo, hi = m["predicted_dice_interval"]
        assert lo <= m["predicted_dice"] <= hi and m["predicted_dice_signals"] == ["tta", "consensus"]
        assert abs(m["predicted_dice"] - dice) < 0.2  # the transfer matrix's true Dice on these images
    assert by_name["weak-nuclei-large-only"]["predicted_dice"] < by_name["nuclei-versatile"]["predicted_dice"] - 0.2
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(ranking_table(run.ranking, "t", width=100))
    assert "Dice (90 %)" in console.export_text()
    summary = dice_summary(run.ranking, good_enough=0.7)
    assert summary.startswith(f"{run.ranking.scores[0].name} is expected to reach Dice")
    upper = run.ranking.scores[0].predicted.interval[1]  # the advice comes when even the upper bound is too low
    assert "bioimage-cte finetune" in dice_summary(run.ranking, good_enough=upper + 0.01)
    assert "fine-tune" not in dice_summary(run.ranking, good_enough=upper - 0.01)
    report = tmp_path / "r.html"
    write_html_report(payload, report, image_paths=images)
    assert "predicted Dice (90 % interval)" in report.read_text()
    entries = entries_from_ranking(payload, target="dsb2018", fingerprint="f")
    card = next(iter(entries.values()))[0].to_dict()
    assert 0 < card["predicted_dice"] <= 1 and len(card["predicted_dice_interval"]) == 2
