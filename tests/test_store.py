"""The results store and the zoo jobs over it, without Prefect: keys, durability, concurrency and cached scoring."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError, UntrustedCodeError
from bioimage_cte.base.version import __version__
from bioimage_cte.cte.outcomes import Stage
from bioimage_cte.run.jobs import (
    ScoreJob,
    TargetSpec,
    collect_results,
    failed_record,
    plan_jobs,
    plan_pairs,
    rank_target,
    read_target,
    record_failure,
    score_job,
)
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.store import InvalidStoreError, ResultStore, ScoreRecord, package_fingerprint, result_key
from bioimage_cte.zoo.sources import find_models

ROOT = Path(__file__).resolve().parents[1]


def _record(i: int = 0, **changes) -> ScoreRecord:
    base = ScoreRecord(f"model-{i}", "dataset", "cte-dropout", {"strength": 0.2, "seed": 0}, "0.1.0", "ok",
                       name=f"m{i}", per_image={"cte-dropout": [0.5, float("nan")]}, true={"dice": [0.9, 0.8]})
    return replace(base, **changes)


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results.sqlite")


def test_key_changes_when_any_component_changes():
    base = {"model": "m", "dataset": "d", "estimator": "cte-dropout", "settings": {"strength": 0.2, "seed": 0}}
    key = result_key(**base, version="0.1.0")
    changed = [
        result_key(**{**base, "model": "m2"}, version="0.1.0"),
        result_key(**{**base, "dataset": "d2"}, version="0.1.0"),
        result_key(**{**base, "estimator": "cte-input"}, version="0.1.0"),
        result_key(**{**base, "settings": {"strength": 0.3, "seed": 0}}, version="0.1.0"),
        result_key(**{**base, "settings": {"strength": 0.2, "seed": 1}}, version="0.1.0"),
        result_key(**base, version="0.2.0"),
    ]
    assert len({key, *changed}) == 7
    assert key == result_key("m", "d", "cte-dropout", {"seed": 0, "strength": 0.2}, version="0.1.0")  # order-free


def test_put_get_round_trip_keeps_nan_and_lists(store: ResultStore):
    record = _record()
    store.put(record.key, record)
    got = store.get(record.key)
    assert got.per_image["cte-dropout"][0] == 0.5 and math.isnan(got.per_image["cte-dropout"][1])
    assert got.true == {"dice": [0.9, 0.8]} and got.status == "ok" and got.key == record.key
    assert store.get("0" * 64) is None
    failed = replace(record, status="failed", error="boom")  # same key: replaced, not added
    store.put(failed.key, failed)
    assert len(store) == 1 and store.get(record.key).error == "boom"
    assert list(store.records(status="failed")) == [record.key] and store.records(status="ok") == {}


def test_records_of_older_and_newer_versions_decode():
    from bioimage_cte.run.store import _decode, _encode

    payload = json.loads(_encode(_record()))
    older = {k: v for k, v in payload.items() if k != "foreground"}  # written before foreground was stored
    assert _decode(json.dumps(older)).foreground == []
    newer = {**payload, "a_later_field": 1}
    assert _encode(_decode(json.dumps(newer))) == _encode(_record())  # the same record (NaN and all)


def test_put_refuses_a_key_that_is_not_the_records(store: ResultStore):
    with pytest.raises(ValueError, match="pass record.key"):
        store.put("0" * 64, _record())


def test_store_uses_the_write_ahead_log(store: ResultStore):
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_files_are_refused_with_the_path(tmp_path: Path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidStoreError, match=str(junk)):
        ResultStore(junk)
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(InvalidStoreError, match="newer bioimage-cte"):
        ResultStore(newer)


def test_concurrent_puts_from_two_threads(tmp_path: Path):
    path = tmp_path / "results.sqlite"
    ResultStore(path)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        store = ResultStore(path)  # as a worker would: its own instance, same file
        try:
            for i in range(offset, offset + 60):
                record = _record(i)
                store.put(record.key, record)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ResultStore(path)) == 120


_WRITER = """
import sys
from bioimage_cte.run.store import ResultStore, ScoreRecord
store = ResultStore(sys.argv[1])
for i in range(100000):
    record = ScoreRecord(f"model-{i}", "d", "cte-dropout", {"strength": 0.2}, "0.1.0", "ok",
                         per_image={"x": [0.5] * 50})
    store.put(record.key, record)
    print(record.key, flush=True)  # printed only after the commit returned
"""


def test_sigkill_mid_writes_keeps_every_committed_row(tmp_path: Path):
    path = tmp_path / "results.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    committed = []
    try:
        for line in proc.stdout:
            committed.append(line.strip())
            if len(committed) >= 40:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = ResultStore(path)
    assert all(store.get(key) is not None for key in committed)
    assert len(store) >= len(committed)


def _rewrite_zip(source: Path, dest: Path, change: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change.get(info.filename, zin.read(info)))


def test_package_fingerprint_sees_weights_but_not_our_annotation(tmp_path: Path, package: Path):
    from bioimage_cte.outputs.annotate import TransferabilityEntry, annotate_package

    copy = tmp_path / package.name
    shutil.copy(package, copy)
    before = package_fingerprint(str(copy))
    assert before == package_fingerprint(str(package))  # content, not location
    entry = TransferabilityEntry("t", "f", "cte-dropout", {}, 0.9, 1, 3, 2, "2025-01-01", "0.1.0")
    annotate_package(copy, entry, backup=False)
    assert package_fingerprint(str(copy)) == before  # write-back must not make every model look new

    with zipfile.ZipFile(package) as zf:
        weights = next(n for n in zf.namelist() if n.endswith((".pt", ".pth")))
        data = zf.read(weights)
        changed_bytes = data[:-1] + bytes([data[-1] ^ 1])
    changed = tmp_path / "changed.zip"
    _rewrite_zip(package, changed, {weights: changed_bytes})
    assert package_fingerprint(str(changed)) != before

    junk = tmp_path / "junk.zip"
    junk.write_bytes(os.urandom(1000))
    assert len(package_fingerprint(str(junk))) == 64  # a broken package still gets a key
    assert package_fingerprint("https://x.org/m/rdf.yaml") == "url:https://x.org/m/rdf.yaml"


@pytest.fixture()
def small_target(tmp_path: Path) -> Path:
    src = ROOT / "resources" / "data" / "dsb2018"
    (tmp_path / "t" / "images").mkdir(parents=True)
    for image in sorted((src / "images").glob("*.tif"))[:2]:
        shutil.copy(image, tmp_path / "t" / "images")
    shutil.copy(src / "target.yaml", tmp_path / "t")
    return tmp_path / "t"


def test_read_target_checks_labels_up_front(small_target: Path):
    (small_target / "labels").mkdir()
    first = sorted((small_target / "images").iterdir())[0]
    shutil.copy(first, small_target / "labels")
    with pytest.raises(InvalidImageError, match="no label"):
        read_target(small_target)


def test_plan_jobs_keys_follow_targets_and_settings(tmp_path: Path, small_target: Path, package: Path):
    sources = find_models([package])
    target = read_target(small_target)
    assert target.labels is None and target.task == "nuclei" and len(target.images) == 2
    jobs = plan_jobs(sources, [target], RankOptions(estimator="cte-dropout"))
    moved = tmp_path / "moved"
    shutil.copytree(small_target, moved)
    dropout = RankOptions(estimator="cte-dropout")
    assert plan_jobs(sources, [read_target(moved)], dropout)[0].key == jobs[0].key  # content-addressed
    assert plan_jobs(sources, [target], RankOptions(estimator="cte-dropout", seed=1))[0].key != jobs[0].key
    assert plan_jobs(sources, [target], RankOptions(estimator="cte-dropout", strength=0.3))[0].key != jobs[0].key
    assert plan_jobs(sources, [target], dropout, match_task=True) == jobs  # the package is tagged nuclei
    junk = tmp_path / "zoo" / "junk.zip"
    junk.parent.mkdir()
    junk.write_bytes(os.urandom(512))
    cells = replace(target, task="cells")
    kept = plan_jobs(sources + find_models([junk.parent]), [cells], RankOptions(estimator="cte-dropout"),
                     match_task=True)
    assert [j.source.name for j in kept] == ["junk"]  # a nuclei model is left out; an unreadable one is not
    with pytest.raises(BioimageCteError, match="consensus"):
        plan_jobs(sources, [target], RankOptions(estimator="consensus"))


@pytest.mark.slow
def test_score_job_scores_once_and_records_failures(tmp_path: Path, small_target: Path, package: Path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(os.urandom(2048))
    sources = find_models([package]) + [find_models([tmp_path])[0]]
    assert sources[1].name == "broken"
    store = ResultStore(tmp_path / "results.sqlite")
    target = read_target(small_target)
    good, bad = plan_jobs(sources, [target], RankOptions(estimator="cte-dropout"))

    assert score_job(good, store).scored is True
    assert score_job(good, store).scored is False  # cache hit: nothing recomputed
    with pytest.raises(ValueError, match="broken.zip"):
        score_job(bad, store)
    assert store.get(bad.key).status == "failed" and "broken.zip" in store.get(bad.key).error

    results, failures = collect_results([good, bad], store)
    assert [r.source.name for r in results] == ["nuclei-small-bright"] and len(results[0].per_image["cte-dropout"]) == 2
    assert len(results[0].foreground) == 2 and all(0.0 < f < 0.9 for f in results[0].foreground)
    assert [f.name for f in failures] == ["broken"]
    payload = rank_target(target, [good, bad], store, RankOptions(estimator="cte-dropout"))
    assert payload["models"][0]["sha256"] == good.sha256 and payload["settings"]["n_images"] == 2
    assert payload["models"][0]["foreground_fraction"] == pytest.approx(np.median(results[0].foreground))
    assert payload["target"]["fingerprint"] == target.fingerprint

    store.delete(good.key)
    _, failures = collect_results([good], store)
    assert "not scored" in failures[0].reason


def _zoo_jobs(folder: Path, package: Path, target: TargetSpec, names: tuple[str, ...],
              options: RankOptions) -> dict[str, ScoreJob]:
    """name -> its job, planned by plan_pairs (the library's key code) over copies of ``package`` under the names.

    Each copy holds one more file naming it, so each is another package (another fingerprint, another key).
    Nothing is loaded or scored.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        with zipfile.ZipFile(package) as zin, zipfile.ZipFile(folder / f"{name}.zip", "w") as zout:
            for info in zin.infolist():
                zout.writestr(info, zin.read(info))
            zout.writestr("copy-of.txt", name)
    jobs, unfit = plan_pairs(find_models([folder]), [target], options)
    assert unfit == []
    return {job.source.name: job for job in jobs}


def test_rank_target_from_stored_records_without_a_model(store: ResultStore, tmp_path: Path, small_target: Path,
                                                        package: Path):
    options = RankOptions(estimator="cte-dropout", seed=2)
    target = read_target(small_target)
    names = ("good", "fair", "no-greybox", "crashed", "untrusted", "missing")
    jobs = _zoo_jobs(tmp_path / "zoo", package, target, names, options)
    assert sorted(jobs) == sorted(names) and len({j.key for j in jobs.values()}) == len(names)
    good, fair, greybox, crashed, untrusted, missing = (jobs[n] for n in names)

    def ok(job: ScoreJob, values: list[float], **changes) -> ScoreRecord:
        return ScoreRecord(job.model, target.fingerprint, "cte-dropout", job.settings, __version__, "ok",
                           name=job.source.name, per_image={"cte-dropout": values} if values else {},
                           foreground=[0.2, 0.3], **changes)

    store.put(good.key, ok(good, [0.9, 0.8]))
    store.put(fair.key, ok(fair, [0.5, 0.6]))
    store.put(greybox.key, ok(greybox, [], failures={"cte-dropout": (Stage.ESTIMATOR, "no pytorch_state_dict")}))
    store.put(crashed.key, failed_record(crashed, RuntimeError("the model crashed")))
    outcome = record_failure(untrusted, store, UntrustedCodeError("untrusted.zip needs --trust-code"))
    assert outcome.status == "failed" and "--trust-code" in outcome.error
    assert store.get(untrusted.key).stage == Stage.SKIPPED
    assert store.get(crashed.key).stage == Stage.PREDICT and "RuntimeError: the model crashed" in \
        store.get(crashed.key).error
    # a job that already stored its own failure keeps it
    assert record_failure(crashed, store, RuntimeError("later")).error == "RuntimeError: the model crashed"

    results, failures = collect_results([good, fair, greybox, crashed, untrusted, missing], store)
    assert [r.source.name for r in results] == ["good", "fair", "no-greybox"]
    assert results[0].sha256 == good.sha256  # the package's current sha256, not the stored one
    assert [(f.name, f.stage) for f in failures] == [("crashed", Stage.PREDICT), ("untrusted", Stage.SKIPPED),
                                                     ("missing", Stage.PREDICT)]
    assert "not scored" in failures[-1].reason

    payload = rank_target(target, [good, fair, greybox, crashed, untrusted, missing], store, options)
    assert [(m["name"], m["rank"]) for m in payload["models"]] == [("good", 1), ("fair", 2)]
    assert payload["models"][0]["score"] == pytest.approx(0.85)
    stages = {f["name"]: (f["stage"], f["reason"]) for f in payload["failures"]}
    assert stages == {"crashed": ("predict", "RuntimeError: the model crashed"),
                      "untrusted": ("skipped", "untrusted.zip needs --trust-code"),
                      "missing": ("predict", stages["missing"][1]),
                      "no-greybox": ("estimator", "no pytorch_state_dict")}
    assert payload["settings"]["seed"] == 2 and payload["settings"]["n_images"] == 2
    assert payload["settings"]["images"] == str(small_target / "images") and payload["target"]["task"] == "nuclei"
    json.dumps(payload, allow_nan=False)


def test_device_and_tag_do_not_change_the_key(small_target: Path, package: Path):
    sources, target = find_models([package]), read_target(small_target)

    def key(options: RankOptions) -> str:
        (job,), _ = plan_pairs(sources, [target], options)
        return job.key

    dropout = key(RankOptions(estimator="cte-dropout"))
    assert key(RankOptions(estimator="cte-dropout", device="cuda:1", tag="nuclei")) == dropout
    assert key(RankOptions(estimator="cte-dropout", trust_code=True)) != dropout
    assert key(RankOptions(trust_code=True)) != dropout  # the default estimator
    assert key(RankOptions(estimator="cte-dropout", strength=0.3)) != dropout
