"""Hostile and broken input through ``bioimage-cte rank``: a generated corpus, each case with its message and exit code.

Every case is built here from the demo package ``nuclei-small-bright`` (rewritten zips, YAML bombs, broken
images, bad output paths, ...) and run through the command line in this process. Each asserts the exit code
(0 ranked, 1 bad input or setup found before any model ran, 3 nothing ranked, 4 ``--strict`` and something
failed) and the class of its message: the one ``error:`` line, or the ``failed <model>`` line naming the package
and the reason. The cases whose packages never reach a model need no torch and run in the fast lane.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from corpus import _rewrite
from test_hostile import npy_bomb, png_bomb, tiff_bomb, yaml_bomb
from typer.testing import CliRunner

from bioimage_cte.cli.commands import ExitCode, app

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resources" / "zoo" / "nuclei-small-bright.zip"
runner = CliRunner()


def _rank(*args: object):
    # written for the grey-box path (layers, state-dict weights): cte-dropout unless a test names an estimator
    words = [str(a) for a in args]
    extra = [] if "--estimator" in words else ["--estimator", "cte-dropout"]
    return runner.invoke(app, ["rank", *words, *extra])


def _one_error(result) -> str:
    """The single 'error:' line of a run that stopped before any model ran."""
    # progress lines ("[0:00:01] scoring: ...") may come first when stderr is no terminal
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert lines and lines[0].startswith("error: "), result.output
    return lines[0]


def _failed_lines(result, name: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"failed {name} (")]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(folder / f"img{i}.tif", rng.normal(100, 20, (64, 64)).astype(np.float32))
    return folder


# --- packages given by name: each problem is that package's failure --------------------------------------------------


def _zip_with(dst: Path, entries: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(PACKAGE) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        for name, blob in entries.items():
            zout.writestr(zipfile.ZipInfo(name), blob)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zout.writestr(info, b"/etc/passwd")
    return dst


def _oversized(dst: Path) -> Path:
    from corpus import _claim_size

    _zip_with(dst, {"huge.bin": b"0" * 64})
    _claim_size(dst, "huge.bin", 3 * 1024**3)
    return dst


def _rdf(dst: Path, text: str | bytes) -> Path:
    with zipfile.ZipFile(PACKAGE) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, text if name == "rdf.yaml" else zin.read(name))
    return dst


def _folder_package(dst: Path, rdf_text: str) -> Path:
    with zipfile.ZipFile(PACKAGE) as zf:
        zf.extractall(dst)
    (dst / "rdf.yaml").write_text(rdf_text)
    return dst


def _index(dst: Path, text: str) -> Path:
    dst.write_text(text)
    return dst


@dataclass(frozen=True)
class Case:
    make: object  # (tmp folder) -> the path to pass
    reason: str  # a part of the one-line reason; "{path}" stands for the path passed
    name: str | None = None  # the model name in the failure line (default: the file's stem)


PACKAGE_CASES = {
    "zip-traversal": Case(lambda d: _zip_with(d / "zip-traversal.zip", {"../evil.txt": b"x"}),
                          "has an entry '../evil.txt' that points outside the package"),
    "zip-absolute": Case(lambda d: _zip_with(d / "zip-absolute.zip", {"/tmp/evil.txt": b"x"}),
                         "has an entry with an absolute path '/tmp/evil.txt'"),
    "zip-symlink": Case(lambda d: _zip_with(d / "zip-symlink.zip", {}, symlink="link"), "has a symlink entry 'link'"),
    "zip-backslash-traversal": Case(lambda d: _zip_with(d / "zip-backslash-traversal.zip", {"..\\evil.txt": b"x"}),
                                    "points outside the package"),
    "zip-oversized": Case(lambda d: _oversized(d / "zip-oversized.zip"),
                          "entry 'huge.bin' unpacks to 3221225472 bytes, above the limit of 2147483648; raise the "
                          "limit (--max-entry-bytes"),
    "not-a-zip": Case(lambda d: (d / "not-a-zip.zip").write_bytes(os.urandom(300)) and d / "not-a-zip.zip",
                      "is not a valid zip"),
    "zip-without-rdf": Case(lambda d: _zip_only(d / "zip-without-rdf.zip"), "has no rdf.yaml or bioimageio.yaml"),
    "yaml-bomb": Case(lambda d: _rdf(d / "yaml-bomb.zip", yaml_bomb()), "expands to more than 100000 YAML nodes"),
    "yaml-aliases": Case(lambda d: _rdf(d / "yaml-aliases.zip", "a: &b 1\n" + "".join(f"k{i}: *b\n" for i in
                                                                                  range(150))),
                         "uses 101 YAML aliases (limit 100)"),
    "yaml-self-alias": Case(lambda d: _rdf(d / "yaml-self-alias.zip", "type: model\na: &a [1, *a]\n"),
                            "has a YAML alias inside the collection it names"),
    "yaml-oversized": Case(lambda d: _rdf(d / "yaml-oversized.zip", "type: model\ndescription: " + "x" * 1_100_000),
                           "is over the size limit of 1048576 bytes"),
    "yaml-deep": Case(lambda d: _rdf(d / "yaml-deep.zip", "a: " + "[" * 20000 + "]" * 20000 + "\n"),
                      "rdf.yaml of {path} nests YAML collections too deeply to parse: a damaged or hostile file; "
                      "fix or remove the package"),
    "yaml-invalid": Case(lambda d: _rdf(d / "yaml-invalid.zip", "name: x\ninputs: [raw\ntype: model\n"),
                         "rdf.yaml is not valid YAML"),
    "yaml-python-tag": Case(lambda d: _rdf(d / "yaml-python-tag.zip", "type: model\nx: !!python/object/apply:os.system"
                                           " ['true']\n"), "could not determine a constructor for the tag"),
    "yaml-not-utf8": Case(lambda d: _rdf(d / "yaml-not-utf8.zip", b"type: model\nname: \xff\xfe\n"),
                          "rdf.yaml is not UTF-8 text"),
    "rdf-a-list": Case(lambda d: _rdf(d / "rdf-a-list.zip", "- 1\n- 2\n"), "holds a list, not the fields"),
    "rdf-dataset": Case(lambda d: _rdf(d / "rdf-dataset.zip", "type: dataset\nname: d\n"),
                        "RDF of type 'dataset', not a model"),
    "missing-weights": Case(lambda d: _rewrite(PACKAGE, d / "missing-weights.zip", drop=("weights.pt",)),
                            "weights.pt is listed in rdf.yaml (weights.pytorch_state_dict.source) but missing"),
    "unsupported-file": Case(lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt",
                             "unsupported file type", name="notes"),
    "empty-folder": Case(lambda d: (d / "empty").mkdir() or d / "empty", "no model packages found", name="empty"),
    "index-not-json": Case(lambda d: _index(d / "index.json", "{not json"), "is not valid JSON", name="index"),
    "index-too-deep": Case(lambda d: _index(d / "deep.json", "[" * 200_000), "nests JSON arrays or objects too deeply",
                           name="deep"),
    "folder-yaml-bomb": Case(lambda d: _folder_package(d / "folder-yaml-bomb", yaml_bomb()),
                             "expands to more than 100000 YAML nodes"),
    "rdf-path-yaml-bomb": Case(lambda d: _folder_package(d / "rdf-path-yaml-bomb", yaml_bomb()) / "rdf.yaml",
                               "expands to more than 100000 YAML nodes"),
}


def _zip_only(dst: Path) -> Path:
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("README.md", "no rdf here")
    return dst


@pytest.mark.parametrize("case", sorted(PACKAGE_CASES))
def test_a_bad_package_alone_is_one_failure_and_nothing_is_ranked(case, tmp_path, images):
    spec = PACKAGE_CASES[case]
    path = spec.make(tmp_path)
    out = tmp_path / "ranking.json"
    result = _rank(path, "--images", images, "-o", out)
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    name = spec.name or case
    reason = spec.reason.replace("{path}", str(path))
    (line,) = _failed_lines(result, name)
    assert reason in line
    assert "none of the 1 models could be ranked" in result.stderr
    payload = json.loads(out.read_text())  # the run's record is written even when nothing ranked
    (failure,) = payload["failures"]
    assert failure["name"] == name and reason in failure["reason"] and "\n" not in failure["reason"]
    assert payload["models"] == []


def test_a_mistyped_model_path_is_one_error_before_anything_runs(tmp_path, images):
    good = tmp_path / "good.zip"
    good.write_bytes(PACKAGE.read_bytes())
    result = _rank(tmp_path / "nowhere.zip", good, "--images", images, "-o", tmp_path / "r.json")
    assert result.exit_code == ExitCode.ERROR, result.output
    assert _one_error(result) == (f"error: model source {tmp_path}/nowhere.zip does not exist; check the path, or "
                                  "pass an rdf.yaml/bioimageio.yaml file, a package folder or .zip, a folder of "
                                  "packages, a collection index .json, or an http(s) URL")
    assert "ranking of" not in result.stdout and not (tmp_path / "r.json").exists()


@pytest.mark.slow  # reads the tags of the 31 demo packages twice: 2 s
def test_a_missing_tag_names_the_tags_the_models_have(images):
    result = _rank(ROOT / "resources" / "zoo", "--tag", "nucleii", "--images", images)
    assert result.exit_code == ExitCode.ERROR, result.output
    line = _one_error(result)
    assert "has the tag 'nucleii' (nor any of nucleii, nucleiis); its 31 models have the tags" in line
    assert "nuclei (19), cells (8)" in line and line.endswith("pass one of them with --tag, or drop --tag")


def test_a_target_folder_given_as_images_points_to_its_images_folder(tmp_path, images):
    target = tmp_path / "target"
    (target / "images").mkdir(parents=True)
    for path in images.glob("*.tif"):
        (target / "images" / path.name).write_bytes(path.read_bytes())
    result = _rank(PACKAGE, "--images", target)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert _one_error(result) == f"error: no images found in {target}, but its images/ folder holds some: pass " \
                                 f"{target / 'images'}"


def test_bad_packages_never_reach_torch(tmp_path, images):
    """The cheap checks run before torch is imported: a run of broken packages only costs start-up."""
    import subprocess
    import sys

    bomb = _rdf(tmp_path / "bomb.zip", yaml_bomb())
    traversal = _zip_with(tmp_path / "traversal.zip", {"../evil.txt": b"x"})
    code = ("import sys\nfrom bioimage_cte.cli.commands import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print('torch' in sys.modules, 'bioimageio.core' in sys.modules, e.code, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, "rank", str(bomb), str(traversal), "--images", str(images)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == f"False False {int(ExitCode.NOTHING_RANKED)}", done.stderr


@pytest.mark.slow
def test_good_zip_is_ranked_beside_a_traversal_zip_and_strict_says_so(tmp_path, images):
    traversal = _zip_with(tmp_path / "traversal.zip", {"../evil.txt": b"x"})
    out = tmp_path / "r.json"
    result = _rank(PACKAGE, traversal, "--images", images, "-o", out)
    assert result.exit_code == ExitCode.OK, result.output
    payload = json.loads(out.read_text())
    assert [m["name"] for m in payload["models"]] == ["nuclei-small-bright"]
    assert payload["models"][0]["score"] is not None
    assert [f["name"] for f in payload["failures"]] == ["traversal"]
    assert "ranking of 1 model on 2 images; 1 failed" in result.stdout
    strict = _rank(PACKAGE, traversal, "--images", images, "--strict")
    assert strict.exit_code == ExitCode.SOME_FAILED, strict.output
    assert len(_failed_lines(strict, "traversal")) == 1


def test_max_entry_bytes_is_reachable_from_the_command_line(tmp_path, images):
    result = _rank(PACKAGE, "--images", images, "--max-entry-bytes", "1000")
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    (line,) = _failed_lines(result, "nuclei-small-bright")
    assert "above the limit of 1000; raise the limit (--max-entry-bytes" in line


# --- setup problems: one error, before any model runs ----------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (("--device", "cuda:0"), "--device cuda:0: torch "),
    (("--device", "abacus"), "--device 'abacus' is not a torch device"),
    (("--device", "xla"), "--device xla: bioimage-cte runs on cpu, cuda or mps"),
])
def test_a_device_torch_cannot_use_is_one_error_before_any_model(images, args, expected):
    import torch

    if args[1] == "cuda:0" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _rank(PACKAGE, PACKAGE.parent / "nuclei-dim-blurry.zip", "--images", images, *args)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert expected in _one_error(result)
    assert "failed" not in result.stderr


@pytest.mark.slow
def test_a_layer_no_model_has_is_one_error(images):
    result = _rank(PACKAGE, PACKAGE.parent / "nuclei-dim-blurry.zip", "--images", images, "--layer", "no_such_layer")
    assert result.exit_code == ExitCode.ERROR, result.output
    line = _one_error(result)
    assert line.startswith("error: --layer 'no_such_layer' is in none of the 2 models")
    assert "drop --layer" in line and result.stderr.count("no_such_layer' not found") == 1


def _bad_images(folder: Path) -> Path:
    folder.mkdir()
    tifffile.imwrite(folder / "a-good.tif", np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32))
    (folder / "b-noise.tif").write_bytes(np.random.default_rng(1).bytes(512))
    (folder / "c-empty.png").write_bytes(b"")
    np.save(folder / "d-nan.npy", np.full((32, 32), np.nan, np.float32))
    np.save(folder / "e-object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return folder


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: d / "missing", "image path {d}/missing does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images found in {d}/empty"),
    (lambda d: tiff_bomb((d / "t").mkdir() or d / "t" / "huge.tif").parent, "has 1600000000 pixel values"),
    (lambda d: png_bomb((d / "p").mkdir() or d / "p" / "huge.png").parent, "pixel values (shape (100000, 100000, 4)"),
    (lambda d: npy_bomb((d / "n").mkdir() or d / "n" / "huge.npy").parent, "pixel values (shape (50000, 50000)"),
])
def test_an_unusable_images_folder_is_one_error(tmp_path, make, expected):
    target = make(tmp_path)
    result = _rank(PACKAGE, "--images", target)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert expected.format(d=tmp_path) in _one_error(result)
    assert "failed" not in result.stderr and "ranking" not in result.stdout


def test_every_unreadable_image_is_listed_in_one_error(tmp_path):
    folder = _bad_images(tmp_path / "mixed")
    result = _rank(PACKAGE, "--images", folder)
    assert result.exit_code == ExitCode.ERROR, result.output
    first, *rest = result.stderr.strip().splitlines()
    assert first == ("error: 4 of 5 images cannot be read; fix or remove them (or skip them with --skip-bad-images, "
                     "skip_bad=True):")
    assert [n for n in ("b-noise.tif", "c-empty.png", "d-nan.npy", "e-object.npy") if any(n in r for r in rest)] == [
        "b-noise.tif", "c-empty.png", "d-nan.npy", "e-object.npy"]


def test_max_pixels_names_the_option(images):
    result = _rank(PACKAGE, "--images", images, "--max-pixels", "1000")
    assert result.exit_code == ExitCode.ERROR, result.output
    assert "has 4096 pixel values" in result.stderr and "(--max-pixels, max_pixels)" in result.stderr


@pytest.mark.slow
def test_skip_bad_images_ranks_the_rest_and_records_what_it_skipped(tmp_path):
    folder = _bad_images(tmp_path / "mixed")
    out = tmp_path / "r.json"
    result = _rank(PACKAGE, "--images", folder, "--skip-bad-images", "-o", out)
    assert result.exit_code == ExitCode.OK, result.output
    payload = json.loads(out.read_text())
    assert payload["models"][0]["n_images"] == 1 and payload["models"][0]["score"] is not None
    skipped = {Path(s["path"]).name: s["reason"] for s in payload["skipped_images"]}
    assert sorted(skipped) == ["b-noise.tif", "c-empty.png", "d-nan.npy", "e-object.npy"]
    assert "NaN or infinite" in skipped["d-nan.npy"] and "empty file" in skipped["c-empty.png"]
    assert result.stderr.count("warning: skipped") == 4
    strict = _rank(PACKAGE, "--images", folder, "--skip-bad-images", "--strict")
    assert strict.exit_code == ExitCode.SOME_FAILED, strict.output


def test_skip_bad_images_with_no_readable_image_is_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"not a tiff")
    result = _rank(PACKAGE, "--images", folder, "--skip-bad-images")
    assert result.exit_code == ExitCode.ERROR, result.output
    assert _one_error(result) == "error: none of the 1 images can be read, so there is nothing to rank on:"


# --- output destinations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "make", "expected"), [
    ("-o", lambda d: d / "file.txt" / "x.json", "{d}/file.txt is a file, not a folder"),
    ("-o", lambda d: d, "cannot write --output {d}: it is a folder"),
    ("--report", lambda d: d / "file.txt" / "deeper" / "r.html", "{d}/file.txt is a file, not a folder"),
])
def test_an_unwritable_destination_fails_before_any_model(tmp_path, images, option, make, expected):
    (tmp_path / "file.txt").write_text("a regular file")
    result = _rank(PACKAGE, "--images", images, option, make(tmp_path))
    assert result.exit_code == ExitCode.ERROR, result.output
    line = _one_error(result)
    assert expected.format(d=tmp_path) in line and "pass " in line
    assert "ranking of" not in result.output  # nothing ran


@pytest.mark.slow
def test_json_to_stdout_is_the_only_thing_on_stdout(images):
    result = _rank(PACKAGE, "--images", images, "-o", "-")
    assert result.exit_code == ExitCode.OK, result.output
    payload = json.loads(result.stdout)
    assert payload["models"][0]["name"] == "nuclei-small-bright" and payload["skipped_images"] == []
    assert "ranking of 1 model on 2 images" in result.stderr


def test_a_write_that_fails_at_the_end_goes_to_a_fallback_file(tmp_path, monkeypatch):
    from bioimage_cte.outputs.destinations import write_or_fallback

    (tmp_path / "file.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    written = write_or_fallback(tmp_path / "file.txt" / "r.json", b"{}")
    assert written.path is not None and written.path.parent == tmp_path and written.path.read_bytes() == b"{}"
    assert written.problem.startswith(f"cannot write {tmp_path}/file.txt/r.json")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full, a device every write fills up")
def test_rank_whose_output_fails_at_the_end_names_the_fallback(tmp_path, images, monkeypatch):
    # a device is written to, not replaced, and passes the up-front check: the write itself fails (disk full)
    monkeypatch.chdir(tmp_path)
    result = _rank(PACKAGE, "--images", images, "-o", "/dev/full")
    assert result.exit_code == ExitCode.ERROR, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    fallback = Path(line.split("the ranking was written to ")[1].removesuffix(" instead"))
    assert line.startswith("error: cannot write /dev/full") and fallback.parent == tmp_path
    assert json.loads(fallback.read_text())["models"][0]["name"] == "nuclei-small-bright"
    assert Path("/dev/full").is_char_device()


# --- models the estimator cannot judge ---------------------------------------------------------------------------


def _shifted(dst: Path, bias: float) -> Path:
    """The demo package with its last layer's bias shifted: every pixel foreground (+) or background (-)."""
    import torch

    with zipfile.ZipFile(PACKAGE) as zf:
        state = torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True)
    last = [k for k in state if k.endswith("bias")][-1]
    state[last] = state[last] + bias
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return _rewrite(PACKAGE, dst, files={"weights.pt": buffer.getvalue()})


@pytest.mark.slow
# logits of -1e4 overflow exp in the model's sigmoid: a warning outside the tests, an error under -W error
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_constant_predictions_get_no_score_and_go_last(tmp_path, images):
    everywhere, nowhere = _shifted(tmp_path / "everywhere.zip", 1e4), _shifted(tmp_path / "nowhere.zip", -1e4)
    out = tmp_path / "r.json"
    result = _rank(everywhere, nowhere, PACKAGE, "--images", images, "-o", out)
    assert result.exit_code == ExitCode.OK, result.output
    models = json.loads(out.read_text())["models"]
    assert [m["name"] for m in models][0] == "nuclei-small-bright" and models[0]["score"] is not None
    by_name = {m["name"]: m for m in models}
    assert by_name["everywhere"]["score"] is None
    assert "predicts foreground everywhere on every one of the 2 images" in by_name["everywhere"]["note"]
    assert "nowhere" in by_name, result.output
    assert by_name["nowhere"]["score"] is None and "no foreground predicted" in by_name["nowhere"]["note"]
    alone = _rank(everywhere, "--images", images)
    assert alone.exit_code == ExitCode.NOTHING_RANKED, alone.output


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_damaged_weights_are_named_corrupt_with_the_fix(tmp_path, images, damage):
    """A weights file cut short (truncated zip) or of bytes that are no pickle at all; its sha256 in rdf.yaml fits."""
    with zipfile.ZipFile(PACKAGE) as zf:
        weights = zf.read("weights.pt")
    blob = weights[: len(weights) // 3] if damage == "cut" else np.random.default_rng(0).bytes(4096)
    cut = _rewrite(PACKAGE, tmp_path / "cut.zip", files={"weights.pt": blob})
    result = _rank(cut, "--images", images)
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith(("failed cut", "skipped cut"))]
    assert "weights file weights.pt is corrupt or truncated" in line and "download the package again" in line


# --- URLs: served from this machine, never the network ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server over a folder (127.0.0.1, a free port), for URL sources."""
    import functools
    import http.server
    import threading

    root = tmp_path_factory.mktemp("served")
    (root / "bomb").mkdir()
    (root / "bomb" / "rdf.yaml").write_text(yaml_bomb())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


@pytest.mark.parametrize(("path", "name", "reason"), [
    ("bomb/rdf.yaml", "bomb", "expands to more than 100000 YAML nodes"),
    ("gone/rdf.yaml", "gone", "cannot download the rdf.yaml"),
    ("gone/index.json", "index", "cannot download collection index"),
])
def test_a_bad_url_is_that_models_failure(server, images, path, name, reason):
    url, _ = server
    result = _rank(f"{url}/{path}", "--images", images)
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    (line,) = _failed_lines(result, name)
    assert reason in line and url in line


# --- zoo-rank: its inputs are checked before Prefect starts ----------------------------------------------------------


def _zoo_rank(*args: object):
    return runner.invoke(app, ["zoo-rank", *(str(a) for a in args)])


def test_zoo_rank_with_no_zoo_is_one_error_before_prefect(tmp_path, images):
    result = _zoo_rank(tmp_path / "no-zoo", images, "--store", tmp_path / "r.sqlite")
    assert result.exit_code == ExitCode.ERROR, result.output
    assert _one_error(result).startswith(f"error: model source {tmp_path}/no-zoo does not exist")
    assert "Traceback" not in result.output and not (tmp_path / "r.sqlite").exists()


def test_zoo_rank_lists_every_unusable_target_when_none_is_left(tmp_path):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    _bad_images(bad)
    result = _zoo_rank(PACKAGE.parent, tmp_path / "missing", tmp_path / "empty", bad, "--store", tmp_path / "r.sqlite")
    assert result.exit_code == ExitCode.ERROR, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: none of the 3 targets can be used; fix them or pass other folders:"
    assert [line.split(":")[0].strip() for line in lines[1:4]] == [str(tmp_path / n) for n in ("missing", "empty",
                                                                                                 "bad")]
    assert "is not a folder" in lines[1] and "no images found" in lines[2]
    assert "4 of 5 images cannot be read" in lines[3]
    assert "Traceback" not in result.output


def test_label_masks_given_as_images_get_a_warning_and_micrographs_do_not():
    from bioimage_cte.predict.images import check_images, list_images

    data = ROOT / "resources" / "data"
    labels = list_images(data / "dsb2018" / "labels")
    (warning,) = check_images(labels).warnings
    assert warning.startswith(f"4 of 4 images look like label images, not microscopy ({labels[0]}: integer values, "
                              "35 distinct besides background 0 (80 % of the pixels), flat objects)")
    assert "pass the raw images" in warning
    for target in sorted(p for p in data.iterdir() if p.is_dir()):  # no shipped micrograph is taken for labels
        assert check_images(list_images(target / "images")).warnings == (), target
        assert check_images(list_images(target / "labels")[:1]).warnings, target
