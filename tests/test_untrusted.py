"""Untrusted zoo entries run no code and touch nothing outside their place; a hung model is stopped for real.

Real packages rewritten from the demo zoo, real devices, FIFOs and processes. Each case asserts the class of its
message and, through the command line, the exit code; a marker file proves that no code of the package ran.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from corpus import _rewrite, _RunsOnUnpickle, hanging_torchscript
from typer.testing import CliRunner

from bioimage_cte.base.errors import InvalidModelError, UnsafeArchiveError, UntrustedCodeError, WriteError
from bioimage_cte.base.fileutils import special_kind, write_atomic
from bioimage_cte.cli.commands import ExitCode, app
from bioimage_cte.outputs.destinations import check_destination
from bioimage_cte.zoo.archives import check_zip
from bioimage_cte.zoo.models import load_model
from bioimage_cte.zoo.packages import update_rdf
from bioimage_cte.zoo.trust import CodePolicy
from bioimage_cte.zoo.weights import choose_weights

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resources" / "zoo" / "nuclei-small-bright.zip"
DSB = ROOT / "resources" / "data" / "dsb2018"
runner = CliRunner()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "img.tif"
    tifffile.imwrite(path, tifffile.imread(sorted((DSB / "images").glob("*.tif"))[0])[:96, :96])
    return path


# --- architectures from a trusted library: network classes only -------------------------------------------------


def _library(tmp: Path, name: str, module: str, callable_: str, kwargs: dict) -> Path:
    def edit(rdf: dict) -> None:
        arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
        for key in ("source", "sha256"):
            arch.pop(key)
        arch.update(import_from=module, callable=callable_, kwargs=kwargs)

    return _rewrite(PACKAGE, tmp / f"{name}.zip", rdf=edit, drop=("unet.py",))


def _cases(tmp: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (package, marker that would exist had its code run, the refusal's words)."""
    out: dict[str, tuple[Path, Path, str]] = {}
    marker = tmp / "saved-by-torch-save"
    out["torch.save"] = (_library(tmp, "save", "torch", "save", {"obj": "x", "f": str(marker)}), marker,
                         "torch.save is given f=")
    unpickled = tmp / "ran-on-unpickle"
    pickle_path = tmp / "evil.pt"
    torch.save({"hook": _RunsOnUnpickle(unpickled)}, pickle_path)
    out["torch.load"] = (_library(tmp, "load", "torch", "load", {"f": str(pickle_path), "weights_only": False}),
                         unpickled, "torch.load is given f=")
    hub = tmp / "hub"
    hub.mkdir()
    imported = tmp / "hubconf-ran"
    (hub / "hubconf.py").write_text(f"import pathlib\npathlib.Path({str(imported)!r}).write_text('ran')\n"
                                    "def m():\n    return None\n")
    out["torch.hub.load"] = (_library(tmp, "hub", "torch.hub", "load",
                                      {"repo_or_dir": str(hub), "model": "m"}),
                             imported, "torch.hub.load is given repo_or_dir=")
    # a function of another trusted library, and a class that is no network: refused after import, before a call
    out["bioimageio function"] = (_library(tmp, "bioimageio-fn", "bioimageio.core", "test_model", {}),
                                  tmp / "never", "bioimageio.core.test_model is a function, not a torch.nn.Module")
    out["not a module class"] = (_library(tmp, "generator", "torch", "Generator", {}), tmp / "never",
                                 "torch.Generator is a class that is not a torch.nn.Module")
    return out


@pytest.fixture(scope="module")
def architectures(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    return _cases(tmp_path_factory.mktemp("architectures"))


@pytest.mark.parametrize("case", ["torch.save", "torch.load", "torch.hub.load", "bioimageio function",
                                  "not a module class"])
def test_a_trusted_library_provides_network_classes_not_its_functions(architectures, case):
    package, marker, words = architectures[case]
    descr = load_model(str(package))
    for greybox in (True, False):
        with pytest.raises(UntrustedCodeError, match="--trust-code") as refused:
            choose_weights(descr, CodePolicy(), name=package.name, greybox=greybox,
                           weight_format="pytorch_state_dict")
        assert words in str(refused.value)
    assert not marker.exists()


def test_kwargs_must_be_plain_data_naming_no_file(tmp_path):
    from bioimage_cte.zoo.trust import _check_plain_kwargs, _NotAllowed

    class Arch:
        def __init__(self, kwargs):
            self.kwargs = kwargs

    _check_plain_kwargs(Arch({"in_channels": 1, "features": [8, 16], "norm": {"kind": "batch", "eps": 1e-5}}), "m")
    for kwargs in ({"checkpoint": "w.pt"}, {"init": "https://example.org/w.pt"}, {"layers": ["a", "/etc/passwd"]},
                   {"weights_only": False}, {"map_location": "cpu"}):
        with pytest.raises(_NotAllowed):
            _check_plain_kwargs(Arch(kwargs), "m")


@pytest.mark.slow
def test_a_real_network_class_of_a_trusted_library_still_loads_and_trust_code_runs_the_rest(tmp_path, image):
    from bioimage_cte.predict.factory import make_predictor

    good = _library(tmp_path, "good", "bioimage_cte.demozoo.archs.unet", "UNet2d",
                    {"in_channels": 1, "out_channels": 1, "features": 8, "depth": 3})
    with make_predictor(load_model(str(good)), name="good", greybox=True) as predictor:
        assert predictor.weights.reason == "its architecture comes from the trusted library " \
                                           "bioimage_cte.demozoo.archs.unet"
        assert predictor.predict(tifffile.imread(image)).foreground.shape == (96, 96)
    # the marker can appear: with --trust-code the user allows it, and torch.save really runs
    marker = tmp_path / "saved"
    package = _library(tmp_path, "save", "torch", "save", {"obj": "x", "f": str(marker)})
    with pytest.raises(InvalidModelError):
        make_predictor(load_model(str(package)), name="save", greybox=True, code_policy=CodePolicy(trust_code=True))
    assert marker.exists()


@pytest.mark.slow
def test_rank_refuses_every_library_function_and_runs_no_code(architectures, image):
    packages = [package for package, _, _ in architectures.values()]
    result = runner.invoke(app, ["rank", *map(str, packages), "--images", str(image), "--weight-format",
                                 "pytorch_state_dict", "--time-limit", "0"])
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    for name, (package, marker, words) in architectures.items():
        line = next(x for x in result.stderr.splitlines() if x.startswith(f"skipped {package.stem} (skipped)"))
        assert words in line and "--trust-code" in line, line
        assert not marker.exists(), name


# --- one writer: devices and FIFOs are written to, nothing that is not a regular file is replaced ----------------


def test_a_fifo_is_written_to_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b'{"models": []}\n')
    reader.join(timeout=60)
    assert got == [b'{"models": []}\n'] and special_kind(fifo) == "FIFO"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node (os.mknod) needs root")
def test_a_character_device_is_written_to_and_never_replaced(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the kernel's null device, in a temporary folder
    write_atomic(null, b"x" * 1000)
    check_destination(null, option="--output")
    assert special_kind(null) == "character device" and os.stat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary file, no backup


def test_a_folder_or_socket_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(WriteError, match="it is a folder, not a regular file"):
        write_atomic(folder, b"{}")
    with pytest.raises(WriteError, match="is a folder, not a file, and is never replaced"):
        check_destination(folder, option="--output")
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(WriteError, match="it is a socket"):
            write_atomic(path, b"{}")
        with pytest.raises(WriteError, match="--output .*it is a socket"):
            check_destination(path, option="--output")
        assert special_kind(path) == "socket"
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_the_destination_is_checked_by_trying_before_any_model_runs(image):
    # root may write anywhere by its permission bits, but not into /proc: only trying tells
    result = runner.invoke(app, ["rank", str(PACKAGE), "--images", str(image), "-o", "/proc/x/out.json"])
    assert result.exit_code == ExitCode.ERROR
    assert "cannot write --output /proc/x/out.json: cannot create a file in /proc" in result.stderr
    assert "scoring" not in result.stderr  # refused before the first model


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node (os.mknod) needs root")
def test_rank_writes_to_a_device_a_fifo_and_stdout_and_replaces_none(tmp_path, image):
    def rank(*output: str, **popen) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bioimage_cte.cli", "rank", str(PACKAGE), "--images",
                               str(image), "-o", *output], capture_output=True, text=True, timeout=600, **popen)

    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    done = rank(str(null))
    assert done.returncode == 0, done.stderr
    assert special_kind(null) == "character device"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    done = rank(str(fifo))
    reader.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert special_kind(fifo) == "FIFO" and json.loads(got[0])["models"][0]["name"] == "nuclei-small-bright"
    done = rank("/dev/stdout")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"][0]["name"] == "nuclei-small-bright"  # the JSON alone on stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "pipe"]


# --- archives -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("rdf.yaml", "rdf.yaml"), ("rdf.yaml", "./rdf.yaml"),
                                               ("weights.pt", "Weights.PT"), ("a/b.npy", "a\\b.npy")])
def test_two_members_for_one_file_are_refused(tmp_path, first, second):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        if first != "rdf.yaml":
            zf.writestr("rdf.yaml", "type: model\n")
        zf.writestr(first, "type: model\nname: one\n")
        zf.writestr(second, "type: model\nname: two\n")
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"two members for one file, {first!r} and {second!r}")):
        check_zip(path)


def test_rank_refuses_a_package_with_a_second_rdf(tmp_path, image):
    package = tmp_path / "smuggled.zip"
    with zipfile.ZipFile(PACKAGE) as zin:
        members = {name: zin.read(name) for name in zin.namelist()}
    with zipfile.ZipFile(package, "w") as zout, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in members.items():
            zout.writestr(name, data)
        zout.writestr("rdf.yaml", members["rdf.yaml"].replace(b"nuclei-small-bright", b"renamed"))
    result = runner.invoke(app, ["rank", str(package), "--images", str(image)])
    assert result.exit_code == ExitCode.NOTHING_RANKED
    line = next(x for x in result.stderr.splitlines() if x.startswith("failed smuggled ("))
    assert "has two members for one file, 'rdf.yaml' and 'rdf.yaml'" in line


# --- a hung model is stopped for real -----------------------------------------------------------------------------


def _session_gone(pgid: int, seconds: float = 5) -> bool:
    """Whether no process of the session is left: the run stops and reaps its fork server and resource tracker
    itself at exit (a few seconds only for the kernel to finish the reaping)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_rank_stops_a_model_that_never_returns_and_ranks_the_others(tmp_path):
    hung = hanging_torchscript(tmp_path / "hangs-in-torchscript.zip")
    out = tmp_path / "r.json"
    # generous for the good model on a busy machine; the hung one reaches it, in native TorchScript code
    proc = subprocess.Popen([sys.executable, "-m", "bioimage_cte.cli", "rank", str(hung), str(PACKAGE), "--images",
                             str(DSB / "images"), "--time-limit", "30", "-o", str(out)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == ExitCode.OK, stderr
    assert "terminate called" not in stderr  # no thread abandoned in native code
    failed = json.loads(out.read_text())["failures"]
    assert [(f["name"], f["stage"]) for f in failed] == [("hangs-in-torchscript", "predict")]
    assert "timed out after 30 s and was stopped" in failed[0]["reason"]
    assert [m["name"] for m in json.loads(out.read_text())["models"]] == ["nuclei-small-bright"]
    assert _session_gone(proc.pid), "a process of the run is still alive"


@pytest.mark.slow
def test_zoo_rank_stops_a_model_that_never_returns_without_aborting(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    hanging_torchscript(zoo / "hangs-in-torchscript.zip")
    (zoo / PACKAGE.name).write_bytes(PACKAGE.read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "bioimage_cte.cli", "zoo-rank", str(zoo), str(DSB), "--time-limit",
                             "30", "--store", str(tmp_path / "r.sqlite"), "--output-dir", str(tmp_path / "out")],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)  # no prefect.toml of the repository to read
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert "terminate called" not in stderr + stdout
    assert "1 of 2 model x target pairs failed" in stdout + stderr
    ranking = json.loads((tmp_path / "out" / "rankings" / "dsb2018.json").read_text())
    assert [m["name"] for m in ranking["models"]] == ["nuclei-small-bright"]
    assert "timed out after 30 s and was stopped" in ranking["failures"][0]["reason"]
    assert _session_gone(proc.pid), "a process of the run is still alive"


@pytest.mark.slow
def test_transfer_matrix_writes_the_good_rows_and_exits_as_rank_does(tmp_path):
    zoo, data = tmp_path / "zoo", tmp_path / "data"
    zoo.mkdir()
    (zoo / PACKAGE.name).write_bytes(PACKAGE.read_bytes())
    (zoo / "broken.zip").write_bytes(b"not a zip")
    target = data / "dsb2018"
    for part in ("images", "labels"):
        (target / part).mkdir(parents=True)
        for path in sorted((DSB / part).glob("*.tif"))[:2]:
            (target / part / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "m.csv"
    args = ["transfer-matrix", "--zoo", str(zoo), "--data", str(data), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.OK, result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "model,target,metric,value" and {r.split(",")[0] for r in rows[1:]} == {"nuclei-small-bright"}
    assert "failed broken (predict)" in result.stderr
    assert runner.invoke(app, [*args, "--strict"]).exit_code == ExitCode.SOME_FAILED
    (zoo / PACKAGE.name).unlink()
    assert runner.invoke(app, args).exit_code == ExitCode.NOTHING_RANKED


# --- messages that say what is wrong ------------------------------------------------------------------------------


def test_an_object_array_test_tensor_is_named(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    package = _rewrite(PACKAGE, tmp_path / "objects.zip", files={"test_input.npy": buffer.getvalue()})
    with pytest.raises(InvalidModelError, match=r"objects\.zip: test_input\.npy holds Python objects, not numbers"):
        load_model(str(package))


@pytest.mark.slow
def test_an_unsafe_pickle_is_named_as_such_for_black_box_prediction_too(tmp_path, image):
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"hook": _RunsOnUnpickle(marker)}, buffer)

    def state_dict_only(rdf: dict) -> None:
        del rdf["weights"]["torchscript"]

    package = _rewrite(PACKAGE, tmp_path / "pickled.zip", files={"weights.pt": buffer.getvalue()},
                       rdf=state_dict_only, drop=("weights_torchscript.pt",))
    result = runner.invoke(app, ["rank", str(package), "--images", str(image), "--time-limit", "0"])
    assert result.exit_code == ExitCode.NOTHING_RANKED
    line = next(x for x in result.stderr.splitlines() if x.startswith("failed pickled ("))
    assert "weights file weights.pt is an unsafe pickle" in line and "nothing in it ran" in line
    assert not marker.exists()


@pytest.mark.parametrize(("payload", "words"), [
    ([1, 2], "the file is a list, expected an object"),
    ({"models": {"a": 1}, "settings": {"estimator": "tta"}}, "'models' is an object, expected a list of models"),
    ({"models": [], "settings": {}}, "'settings.estimator' is null, expected an estimator name"),
    ({"models": [{"name": "a", "source": "a.zip", "rank": "1", "score": 0.9}], "settings": {"estimator": "tta"}},
     "'models[0].rank' is a string, expected a whole number"),
])
def test_report_and_annotate_name_the_file_and_the_field_of_a_bad_ranking(tmp_path, image, payload, words):
    ranking = tmp_path / "r.json"
    ranking.write_text(json.dumps(payload))
    for args in (["report", str(ranking), "--images", str(image), "-o", str(tmp_path / "r.html")],
                 ["annotate", str(ranking), "--target", "t", "--images", str(image)]):
        result = runner.invoke(app, args)
        assert result.exit_code == ExitCode.ERROR, result.output
        assert f"{ranking} is not a ranking: {words}" in result.stderr, (args[0], result.stderr)


def test_published_zoo_reports_carry_no_local_folder(tmp_path):
    from bioimage_cte.outputs.zoo_reports import write_zoo_reports

    zoo = tmp_path / "home" / "maintainer" / "zoo"
    ranking = {"models": [{"name": "a", "source": str(zoo / "a.zip"), "rank": 1, "score": 0.9, "n_images": 2}],
               "failures": [{"name": "b", "source": str(zoo / "sub" / "b.zip"), "stage": "predict",
                             "reason": f"{zoo / 'sub' / 'b.zip'}: 3D model; see {tmp_path / 'notes' / 'x.txt'}"}],
               "settings": {"estimator": "tta", "images": str(tmp_path / "data" / "dsb" / "images")}}
    written = write_zoo_reports({"dsb": ranking}, tmp_path / "out")
    for path in written:
        text = path.read_text()
        assert str(tmp_path) not in text, (path, text)
    published = json.loads((tmp_path / "out" / "rankings" / "dsb.json").read_text())
    assert published["failures"][0]["reason"] == "sub/b.zip: 3D model; see x.txt"
    assert published["models"][0]["source"] == "a.zip" and published["settings"]["images"] == "images"


def test_write_back_keeps_every_comment_and_adds_no_header():
    text = "# curated by the zoo team (CC-BY)\n# second line\n\nname: m  # its name\ntags:\n  - a\n# the end\n"
    assert update_rdf(text, ["config", "x"], 1) == (
        "# curated by the zoo team (CC-BY)\n# second line\n\nname: m  # its name\ntags:\n  - a\nconfig:\n  x: 1\n"
        "# the end\n")
    assert update_rdf("# above\n---\nname: m\n", ["x"], 1) == "# above\n---\nname: m\nx: 1\n"
    assert update_rdf("%YAML 1.2\n---\nname: m\n", ["x"], 1) == "%YAML 1.2\n---\nname: m\nx: 1\n"
