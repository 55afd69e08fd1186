"""The transfer matrix: true performance of models on labelled targets, written and read back."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.predict.images import target_task
from bioimage_cte.studies.transfer import (
    TransferMatrixWriter,
    compute_transfer_matrix,
    find_targets,
    read_transfer_matrix,
    summarize,
    write_transfer_matrix,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_transfer_matrix_on_a_small_zoo(tmp_path, package, instance_package):
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / "dsb" / sub).mkdir(parents=True)
        for name in ("dsb2018_00.tif", "dsb2018_01.tif"):
            shutil.copy(ROOT / "resources" / "data" / "dsb2018" / sub / name, data / "dsb" / sub / name)
    rows, failures = compute_transfer_matrix([str(package), str(instance_package)], data)
    assert not failures
    assert {(r.model, r.metric) for r in rows} == {(m, k) for m in (package.stem, instance_package.stem)
                                                   for k in ("dice", "f1", "map")}
    assert all(0.0 <= r.value <= 1.0 for r in rows)
    dice = {r.model: r.value for r in rows if r.metric == "dice"}
    assert dice[package.stem] > dice[instance_package.stem]  # nuclei model beats a brightfield-cells model
    out = tmp_path / "matrix.csv"
    write_transfer_matrix(rows, out)
    assert read_transfer_matrix(out) == [type(r)(r.model, r.target, r.metric, round(r.value, 6)) for r in rows]
    summary = summarize(rows)["dsb"]
    assert summary["best_model"] == package.stem and summary["best"] >= summary["median"] >= summary["worst"]

    # written as each model finishes a target: a run stopped after the first model keeps that model's rows, and
    # the progress counted models per target against a known total
    class Stop(Exception):
        pass

    def stop_after_first(batch):
        write(batch)
        raise Stop

    heard = []
    progress = types.SimpleNamespace(start=lambda n: heard.append(("start", n)), plan=lambda m, i: None,
                                     target=lambda name, j, m: heard.append(("target", name, j, m)),
                                     model=lambda source: heard.append(("model", source.name)), image=None)
    partial = tmp_path / "partial.csv"
    with TransferMatrixWriter(partial) as write, pytest.raises(Stop):
        compute_transfer_matrix([str(package), str(instance_package)], data, progress=progress,
                                on_rows=stop_after_first)
    assert heard == [("start", 4), ("target", "dsb", 1, 1), ("model", package.stem)]
    kept = read_transfer_matrix(partial)
    assert {(r.model, r.metric) for r in kept} == {(package.stem, k) for k in ("dice", "f1", "map")}
    assert kept == [r for r in read_transfer_matrix(out) if r.model == package.stem]


def test_targets_and_their_tasks(tmp_path):
    targets = find_targets(ROOT / "resources" / "data")
    assert "dsb2018" in targets and target_task(targets["dsb2018"]) == "nuclei"
    assert target_task(tmp_path) is None
    with pytest.raises(InvalidImageError, match=str(tmp_path)):
        find_targets(tmp_path)
