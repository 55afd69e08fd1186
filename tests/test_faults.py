"""A crash must lose nothing: real processes killed with SIGKILL mid-run, then run again.

- The zoo ranking (``bioimage-cte zoo-rank``, Prefect flow over the results store) killed once some models
  are stored: the store is intact, its temporary Prefect server does not outlive it, the re-run scores only
  the rest and ranks as an uninterrupted run.
- The write-back (``annotate_from_ranking`` over zip and folder packages, in place with backups) killed at
  many points: every package is its old bytes or a complete annotated package, never a broken one; leftovers
  are not mistaken for packages, do not change a package's fingerprint, and a re-run completes and cleans up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from bioimage_cte.outputs.annotate import read_transferability

ROOT = Path(__file__).resolve().parents[1]  # the checkout under test: its subprocesses import from here
ZOO = ROOT / "resources" / "zoo"
DSB = ROOT / "resources" / "data" / "dsb2018" / "images"
MODELS = ("nuclei-small-bright", "nuclei-large-sparse", "nuclei-dim-blurry", "weak-nuclei-tiny")
TARGET = "dsb-two"

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    # no PREFECT_* settings but its home: the project sets the rest itself (offline, quiet), wherever it runs
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TQDM_DISABLE": "1",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its database and the server records under tmp_path
    })
    return env


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (the temporary Prefect server too)."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone once its processes have exited
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- zoo ranking -------------------------------------------------------------------------------------------------


def _stored(store: Path) -> dict[str, str]:
    """key -> created of the committed rows, read without writing (0 rows while the file does not exist yet)."""
    if not store.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as conn:
            return dict(conn.execute("SELECT key, created FROM results WHERE status = 'ok'"))
    except sqlite3.OperationalError:  # the table is not created yet
        return {}


def _zoo_rank(tmp_path: Path, zoo: Path, target: Path, store: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "bioimage_cte.cli", "zoo-rank", str(zoo), str(target), "--store", str(store),
               "--output-dir", str(out)]
    # a session of its own, to find whatever it started; cwd outside the repository: no prefect.toml to read
    return subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _session(sid: int) -> list[str]:
    """Command lines of the live processes of session ``sid`` (zombies are dead)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


def _wait_for(condition, seconds: float, what: str) -> None:
    """Return once ``condition()`` is true; fail after ``seconds`` (a generous limit, not a timing assumption)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)


def _reference_ranking(zoo: Path, target: Path, store: Path) -> list[tuple[str, int, float]]:
    """The same ranking, uninterrupted, through the library the flow's tasks call."""
    from bioimage_cte.run.jobs import plan_jobs, rank_target, read_target, score_job
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.store import ResultStore
    from bioimage_cte.zoo.sources import find_models

    options = RankOptions()  # what zoo-rank runs without options
    spec = read_target(target)
    jobs = plan_jobs(find_models([zoo]), [spec], options)
    results = ResultStore(store)
    for job in jobs:
        score_job(job, results)
    return _order(rank_target(spec, jobs, results, options))


def _order(payload: dict) -> list[tuple[str, int, float]]:
    return [(m["name"], m["rank"], m["score"]) for m in payload["models"]]


def test_sigkill_mid_zoo_ranking_loses_nothing_and_the_rerun_scores_only_the_rest(tmp_path: Path):
    zoo, target = tmp_path / "zoo", tmp_path / TARGET / "images"
    zoo.mkdir()
    target.mkdir(parents=True)
    for name in MODELS:
        shutil.copy(ZOO / f"{name}.zip", zoo)
    for path in sorted(DSB.glob("*.tif"))[:2]:
        shutil.copy(path, target)
    store, out = tmp_path / "results.sqlite", tmp_path / "out"

    proc = _zoo_rank(tmp_path, zoo, target.parent, store, out)
    try:
        # The kill waits for a condition on the run, not for a time: the store holds a scored model. How many
        # more finish before the kill lands does not matter; every check below holds for any number of them.
        # Prefect's first start migrates its database: 30 s to minutes on a busy machine, hence the long limit.
        _wait_for(lambda: _stored(store) or proc.poll() is not None, 600, "a model stored by zoo-rank")
        # a run of 4 models is still at work when its first is stored (the others take seconds each)
        assert proc.poll() is None, f"zoo-rank ended before it could be killed: {proc.communicate()}"
        assert any("create_app" in c for c in _session(proc.pid)), "no temporary Prefect server was running"
        os.kill(proc.pid, signal.SIGKILL)  # the run alone, as the OOM killer or 'kill -9 PID' would
        proc.wait(timeout=60)
        _wait_for(lambda: not _session(proc.pid), 60, "the killed run's processes to end")
    finally:
        _kill_group(proc)
    killed_at = time.time()
    proc.stdout.close()
    proc.stderr.close()

    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = _stored(store)
    assert 1 <= len(before) <= len(MODELS)

    proc = _zoo_rank(tmp_path, zoo, target.parent, store, out)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, f"re-run failed:\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr  # Prefect's tracebacks only with --debug
    done = len(before)
    assert f"scored {len(MODELS) - done} model x target pairs, {done} taken from" in stdout, stdout

    after = _stored(store)
    assert len(after) == len(MODELS)
    assert {k: after[k] for k in before} == before, "a model finished before the kill was scored again"
    rescored = [created for key, created in after.items() if key not in before]
    assert all(_epoch(created) >= killed_at - 1 for created in rescored)

    ranking = json.loads((out / "rankings" / f"{TARGET}.json").read_text())
    assert ranking["failures"] == []
    expected = _reference_ranking(zoo, target.parent, tmp_path / "reference.sqlite")
    got = _order(ranking)
    assert [(n, r) for n, r, _ in got] == [(n, r) for n, r, _ in expected]
    assert [s for _, _, s in got] == pytest.approx([s for _, _, s in expected], abs=1e-6)
    leftovers = [p for p in [*out.rglob("*"), *zoo.rglob("*")] if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_the_next_run_stops_a_server_whose_run_is_gone(tmp_path: Path):
    """When even the watchdog was killed, the next run stops the server from its record; live runs' are kept."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from bioimage_cte_flows.servers import _SERVER_MARK, reap_orphaned_servers, server_records

    # stand-ins with the server's command line: one whose run is gone (recorded run: not its parent), one live
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", _SERVER_MARK]
    orphan, live = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    try:
        with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "home")}):
            folder = tmp_path / "home" / "bioimage-cte-servers"
            folder.mkdir(parents=True)
            dead_run = subprocess.Popen([sys.executable, "-c", "pass"])
            dead_run.wait()
            (folder / f"{orphan.pid}.json").write_text(json.dumps({"server": orphan.pid, "run": dead_run.pid}))
            (folder / f"{live.pid}.json").write_text(json.dumps({"server": live.pid, "run": os.getpid()}))
            assert reap_orphaned_servers() == [orphan.pid]
            assert orphan.wait(timeout=10) is not None and live.poll() is None
            assert [r["server"] for r in server_records()] == [live.pid]
    finally:
        for p in (orphan, live):
            p.kill()
            p.wait()


def _epoch(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso).timestamp()


# --- write-back --------------------------------------------------------------------------------------------------

ZIPS = ("nuclei-small-bright", "nuclei-large-sparse", "nuclei-dim-blurry", "nuclei-dense-textured",
        "nuclei-versatile", "weak-nuclei-large-only")
FOLDERS = ("weak-nuclei-tiny", "nuclei-touching-instance", "weak-nuclei-undertrained")
TRIALS = 16

_WRITE_BACK = """
import sys, time
from pathlib import Path
from bioimage_cte.outputs.annotate import annotate_from_ranking
ranking, images = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
print("ready", flush=True)
start = time.perf_counter()
annotate_from_ranking(ranking, target="dsb-two", images=images, backup=True)
print(time.perf_counter() - start, flush=True)
"""


def _pristine_zoo(folder: Path) -> dict[str, Path]:
    """Fresh copies of the packages: zips, and folders (extracted zips); name -> package path."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    packages = {}
    for name in ZIPS:
        packages[name] = Path(shutil.copy(ZOO / f"{name}.zip", folder / f"{name}.zip"))
    for name in FOLDERS:
        with zipfile.ZipFile(ZOO / f"{name}.zip") as zf:
            zf.extractall(folder / name)
        packages[name] = folder / name
    return packages


def _ranking(path: Path, packages: dict[str, Path]) -> Path:
    """A ranking JSON of the packages as ``bioimage-cte rank --output`` writes it (scores made up: not scored)."""
    from bioimage_cte.zoo.sources import file_sha256

    models = [{"name": name, "source": str(location), "score": 0.9 - 0.05 * i, "rank": i + 1, "n_images": 2,
               "n_valid": 2, "n_empty": 0, "per_image": [0.9, 0.9], "note": "",
               "sha256": file_sha256(location if location.suffix == ".zip" else location / "rdf.yaml")}
              for i, (name, location) in enumerate(packages.items())]
    payload = {"models": models, "failures": [], "settings": {"estimator": "cte-dropout", "p": 0.2, "n_images": 2}}
    path.write_text(json.dumps(payload))
    return path


def _zip_entries(path: Path) -> list[tuple]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, f"{path}: an entry's CRC does not match"
        # every entry but the rdf.yaml: same name, place, compression, CRC and bytes
        return [(i.filename, i.compress_type) if i.filename == "rdf.yaml" else
                (i.filename, i.compress_type, i.CRC, i.date_time, zf.read(i)) for i in zf.infolist()]


def _check_package(name: str, location: Path, original: dict) -> bool:
    """Assert the package is its old bytes or a complete annotated package; True if annotated."""
    if location.suffix == ".zip":
        if location.read_bytes() == original["bytes"]:
            return False
        assert _zip_entries(location) == original["entries"], f"{name}: other zip entries changed"
    else:
        rdf = location / "rdf.yaml"
        if rdf.read_bytes() == original["bytes"]:
            return False
        others = {p.relative_to(location).as_posix(): p.read_bytes() for p in location.rglob("*")
                  if p.is_file() and p.name != "rdf.yaml" and ".bak" not in p.suffixes and not p.name.endswith(".tmp")}
        assert others == original["others"], f"{name}: other files of the folder changed"
    entries = read_transferability(location)  # parses the RDF: a torn file fails here
    assert [e["target"] for e in entries] == [TARGET], f"{name}: changed but without the entry: {entries}"
    return True


def _backups_are_originals(folder: Path, originals: dict[str, dict], *, first_only: bool = False) -> None:
    for backup in folder.rglob("*.bak" if first_only else "*.bak*"):
        package = backup.name.split(".zip.bak")[0] if ".zip.bak" in backup.name else backup.parent.name
        assert backup.read_bytes() == originals[package]["bytes"], f"{backup} is not the package's old bytes"


def _originals(packages: dict[str, Path]) -> dict[str, dict]:
    from bioimage_cte.run.store import package_fingerprint

    originals = {}
    for name, location in packages.items():
        if location.suffix == ".zip":
            originals[name] = {"bytes": location.read_bytes(), "entries": _zip_entries(location)}
        else:
            originals[name] = {"bytes": (location / "rdf.yaml").read_bytes(),
                               "others": {p.relative_to(location).as_posix(): p.read_bytes()
                                          for p in location.rglob("*") if p.is_file() and p.name != "rdf.yaml"}}
        originals[name]["fingerprint"] = package_fingerprint(str(location))
    return originals


def _write_back(tmp_path: Path, ranking: Path, images: list[Path]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITE_BACK, str(ranking), *map(str, images)], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_sigkill_during_write_back_never_leaves_a_broken_package(tmp_path: Path):
    from bioimage_cte.outputs.annotate import annotate_from_ranking
    from bioimage_cte.run.store import package_fingerprint
    from bioimage_cte.zoo.sources import find_models

    images = sorted(DSB.glob("*.tif"))[:2]
    zoo = tmp_path / "zoo"

    # how long an uninterrupted write-back takes here, to spread the kill points over it
    packages = _pristine_zoo(zoo)
    ranking = _ranking(tmp_path / "ranking.json", packages)
    proc = _write_back(tmp_path, ranking, images)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    window = float(stdout.split()[-1])

    originals = _originals(_pristine_zoo(zoo))  # every trial starts from these same bytes at the same paths
    outcomes = []
    for trial in range(TRIALS):
        packages = _pristine_zoo(zoo)
        proc = _write_back(tmp_path, ranking, images)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.communicate()
            time.sleep(window * (trial + 0.5) / TRIALS)  # kill points spread evenly over the write-back
        finally:
            _kill_group(proc)
            proc.stdout.close()
            proc.stderr.close()

        annotated = [_check_package(n, p, originals[n]) for n, p in packages.items()]
        _backups_are_originals(zoo, originals)
        leftovers = sorted(p.name for p in zoo.rglob("*.tmp"))
        outcomes.append((sum(annotated), len(leftovers)))
        # leftovers are no packages and no part of one: the zoo is the same models, to be scored from the store
        assert sorted(s.name for s in find_models([zoo])) == sorted(packages), f"trial {trial}: {leftovers}"
        for name, location in packages.items():
            assert package_fingerprint(str(location)) == originals[name]["fingerprint"], f"trial {trial}: {name}"

        written = annotate_from_ranking(ranking, target=TARGET, images=images, backup=True)  # the re-run
        assert len(written) == len(packages)
        assert all(_check_package(n, p, originals[n]) for n, p in packages.items())
        _backups_are_originals(zoo, originals, first_only=True)  # later ones: what the killed run wrote
        assert list(zoo.rglob("*.tmp")) == [], f"trial {trial}: the re-run left temporary files"

    print(f"write-back of {len(packages)} packages in {window:.2f} s; (annotated, temp files) per kill: {outcomes}")
    assert any(0 < n < len(packages) or t for n, t in outcomes), f"no kill landed mid write-back: {outcomes}"


def test_only_dead_writers_temporary_files_are_removed(tmp_path: Path):
    from bioimage_cte.base.fileutils import is_temporary
    from bioimage_cte.outputs.annotate import TransferabilityEntry, annotate_package

    package = Path(shutil.copy(ZOO / "weak-nuclei-tiny.zip", tmp_path / "weak-nuclei-tiny.zip"))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = tmp_path / f".{package.name}.{int(finished.stdout)}.0123456789ab.tmp"  # its writer has exited
    alive = tmp_path / f".{package.name}.{os.getpid()}.0123456789ab.tmp"  # a writer still at work (this process)
    other = tmp_path / f".other.zip.{int(finished.stdout)}.0123456789ab.tmp"  # another destination's
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
        assert is_temporary(path.name)
    annotate_package(package, TransferabilityEntry(TARGET, "f" * 64, "cte-dropout", {"p": 0.2}, 0.9, 1, 3, 2,
                                                   "2025-01-02T03:04:05+00:00", "0.1.0"))
    assert not dead.exists() and alive.exists() and other.exists()
