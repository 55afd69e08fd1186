"""A zoo run loads each model once for every target it fits, and keeps per-pair results and time limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bioimage_cte.run.jobs import group_jobs, plan_zoo, score_job, score_jobs
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"
#: two nuclei models that fit both targets, and a two-channel model that fits neither (never loaded)
MODELS = ("nuclei-small-bright", "nuclei-versatile", "cells2ch-unet")


def test_jobs_are_grouped_by_model_in_the_order_models_first_appear():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Source:
        location: str

    @dataclass(frozen=True)
    class Job:
        source: Source
        target: str

    jobs = [Job(Source(m), t) for t in ("t1", "t2") for m in ("a", "b")] + [Job(Source("c"), "t2")]
    groups = group_jobs(jobs)  # type: ignore[arg-type]
    assert [[(j.source.location, j.target) for j in g] for g in groups] == [
        [("a", "t1"), ("a", "t2")], [("b", "t1"), ("b", "t2")], [("c", "t2")]]


def _small_zoo(tmp_path: Path, *, hanging: bool) -> tuple[Path, list[str]]:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in MODELS:
        shutil.copy(ZOO / f"{name}.zip", zoo)
    if hanging:
        from corpus import hanging_torchscript

        hanging_torchscript(zoo / "hangs-in-torchscript.zip")
    targets = []
    for name in ("dsb2018", "nuclei-tiny-crowded"):
        images = tmp_path / name / "images"
        images.mkdir(parents=True)
        for path in sorted((DATA / name / "images").glob("*.tif"))[:2]:
            shutil.copy(path, images)
        targets.append(str(tmp_path / name))
    return zoo, targets


def _per_pair(store: ResultStore, jobs) -> dict[tuple[str, str], tuple]:
    return {(j.source.name, j.target.name): (r.status, r.per_image, r.error)
            for j in jobs if (r := store.get(j.key)) is not None}


@pytest.mark.slow
def test_a_zoo_run_loads_each_fitting_model_once_and_stores_what_one_job_per_pair_stores(tmp_path):
    zoo, targets = _small_zoo(tmp_path, hanging=False)
    options = RankOptions()  # the default: tta, a time limit, so each model in a child process
    _, jobs, unfit = plan_zoo(str(zoo), targets, options)
    assert {u.model for u in unfit} == {"cells2ch-unet"} and len(jobs) == 4
    grouped = ResultStore(tmp_path / "grouped.sqlite")
    outcomes = [o for group in group_jobs(jobs) for o in score_jobs(group, grouped)]
    assert [o.status for o in outcomes] == ["ok"] * 4
    assert sum(o.loads for o in outcomes) == 2  # the two models that fit a target; cells2ch-unet never loads
    assert [o.loads for o in outcomes] == [1, 0, 1, 0]  # each model's first target loads it
    again = [o for group in group_jobs(jobs) for o in score_jobs(group, grouped)]
    assert [(o.scored, o.loads) for o in again] == [(False, 0)] * 4  # from the store: nothing loaded
    per_pair = ResultStore(tmp_path / "per-pair.sqlite")
    assert sum(score_job(job, per_pair).loads for job in jobs) == 4  # one load per pair, as before
    assert _per_pair(grouped, jobs) == _per_pair(per_pair, jobs)  # the same values, bit for bit
    # without a time limit (or in a Dask worker, which may not fork) the model is kept in this process instead
    _, here, _ = plan_zoo(str(zoo), targets, RankOptions(time_limit=0))
    in_process = ResultStore(tmp_path / "in-process.sqlite")
    assert [o.loads for group in group_jobs(here) for o in score_jobs(group, in_process)] == [1, 0, 1, 0]
    assert _per_pair(in_process, here) == _per_pair(per_pair, jobs)
    from bioimage_cte.run.scoring import _KEPT

    assert _KEPT == {}  # each group let its model go


@pytest.mark.slow
def test_a_pair_that_hangs_is_killed_at_its_limit_and_the_next_target_gets_a_new_process(tmp_path):
    zoo, targets = _small_zoo(tmp_path, hanging=True)
    options = RankOptions(time_limit=20)
    _, jobs, _ = plan_zoo(str(zoo), targets, options)
    store = ResultStore(tmp_path / "results.sqlite")
    outcomes = {(j.source.name, j.target.name): o for group in group_jobs(jobs)
                for j, o in zip(group, score_jobs(group, store, retries=1), strict=True)}
    hung = [o for (model, _), o in outcomes.items() if model == "hangs-in-torchscript"]
    assert [o.status for o in hung] == ["failed", "failed"]
    assert all("timed out after 20 s and was stopped" in (o.error or "") for o in hung)  # a timeout is not retried
    assert [o.loads for o in hung] == [1, 1]  # killed with its process: the second target loads it again
    good = [o for (model, _), o in outcomes.items() if model != "hangs-in-torchscript"]
    assert [o.status for o in good] == ["ok"] * 4 and sum(o.loads for o in good) == 2
    assert {k: v[0] for k, v in _per_pair(store, jobs).items()} == {k: o.status for k, o in outcomes.items()}
