"""Zoo IDs, versions and DOIs as model sources, resolved by bioimageio.spec against a loopback zoo (127.0.0.1).

The server serves an ID map (bioimageio.spec's ``BIOIMAGEIO_ID_MAP``) and real demo packages: two zips and one
package laid out as the zoo serves them (an rdf.yaml beside its files). Every URL setting of bioimageio.spec and
bioimageio.core points at the server, and the download cache is in the test's own folder, so nothing reaches the
network and the real download, cache and resolution code of bioimageio.spec runs.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.cli.commands import ExitCode, app
from bioimage_cte.zoo.sources import find_models, missing_sources

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
IMAGES = ROOT / "resources" / "data" / "dsb2018" / "images"
BY_ID = "bioimage-io/nuclei-small-bright/1.2"
BY_DOI = "10.5281/zenodo.5764892"
BY_RDF = "nuclei-versatile-served"  # an rdf.yaml with its files beside it, as bioimage.io serves a model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Zoo:
    """A loopback HTTP server over a folder; ``stop()`` takes it down (the port then refuses connections)."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on stderr
        pass


def _serve_zoo(root: Path) -> _Zoo:
    """The folder a zoo serves: two package zips, one package as an rdf.yaml with its files, and the ID map."""
    (root / "packages").mkdir(parents=True)
    for name in ("nuclei-small-bright", "nuclei-versatile"):
        shutil.copy(ZOO / f"{name}.zip", root / "packages" / f"{name}.zip")
    with zipfile.ZipFile(ZOO / "nuclei-versatile.zip") as zf:
        zf.extractall(root / BY_RDF / "1" / "files")
    zoo = _Zoo(root)
    small, versatile = (root / "packages" / f"{n}.zip" for n in ("nuclei-small-bright", "nuclei-versatile"))
    rdf = root / BY_RDF / "1" / "files" / "rdf.yaml"
    id_map = {
        "nuclei-small-bright": {"source": f"{zoo.url}/packages/{small.name}", "sha256": _sha256(small)},
        "nuclei-small-bright/1.2": {"source": f"{zoo.url}/packages/{small.name}", "sha256": _sha256(small)},
        BY_DOI: {"source": f"{zoo.url}/packages/{versatile.name}", "sha256": _sha256(versatile)},
        BY_RDF: {"source": f"{zoo.url}/{BY_RDF}/1/files/rdf.yaml", "sha256": _sha256(rdf)},
    }
    (root / "id_map.json").write_text(json.dumps(id_map))
    (root / "id_map_draft.json").write_text("{}")
    return zoo


def _point_bioimageio_at(monkeypatch, url: str, cache: Path) -> None:
    """Every URL setting of bioimageio.spec and bioimageio.core at the loopback server, the cache in ``cache``.

    Set both in this process (the settings were read at import) and in the environment (for child processes).
    """
    from bioimageio.core import settings as core_settings
    from bioimageio.spec import settings as spec_settings

    values = {
        "id_map": f"{url}/id_map.json",
        "id_map_draft": f"{url}/id_map_draft.json",
        "collection_http_pattern": f"{url}/artifacts/{{bioimageio_id}}/files/rdf.yaml",
        "huggingface_http_pattern": f"{url}/huggingface/{{repo_id}}/{{branch}}/bioimageio.yaml",
        "hypha_upload": f"{url}/upload",
        "collection_index_url": f"{url}/collection/index.json",
        "collection_config_url": f"{url}/collection/config.json",
    }
    for settings in (spec_settings, core_settings):
        urls = {k for k, v in type(settings).model_fields.items() if str(v.default).startswith("http")}
        assert urls <= set(values), f"a bioimageio URL setting this test does not redirect: {urls - set(values)}"
        for key in urls:
            monkeypatch.setattr(settings, key, values[key])
        monkeypatch.setattr(settings, "cache_path", cache)
    for key, value in values.items():
        monkeypatch.setenv(f"BIOIMAGEIO_{key.upper()}", value)
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(cache))


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    server = _serve_zoo(tmp_path / "served")
    _point_bioimageio_at(monkeypatch, server.url, tmp_path / "bioimageio-cache")
    yield server
    server.stop()


def _rank(*models: str, output: Path):
    return runner.invoke(app, ["rank", *models, "--images", str(IMAGES / "dsb2018_0[01].tif"), "--output", str(output)])


def _in_new_process(*args: str) -> subprocess.CompletedProcess:
    """A new Python with ``args`` (the environment points bioimageio at the server and the test's cache).

    bioimageio.spec's cache also remembers, in the process that downloaded a URL, what it got, so what must come
    from the disk cache is asked for by a new process, as a user's next command would.
    """
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _ranked(output: Path) -> dict[str, float]:
    payload = json.loads(output.read_text())
    assert payload["failures"] == []
    return {m["source"]: m["score"] for m in payload["models"]}


def test_ids_dois_and_urls_are_sources_paths_are_not():
    assert missing_sources(["affable-shark", "affable-shark/1.2", BY_ID, BY_DOI]) is None
    assert str(missing_sources(["no/such/zoo"])).startswith("model source no/such/zoo does not exist")


@pytest.mark.slow
def test_rank_by_id_and_doi_then_again_offline_from_the_cache(zoo, tmp_path):
    online, offline = tmp_path / "online.json", tmp_path / "offline.json"
    result = _rank(BY_ID, BY_DOI, output=online)
    assert result.exit_code == ExitCode.OK, result.output
    scores = _ranked(online)
    assert set(scores) == {BY_ID, BY_DOI}
    payload = json.loads(online.read_text())
    assert {m["name"] for m in payload["models"]} == {"nuclei-small-bright-1.2", "10.5281-zenodo.5764892"}
    cache = tmp_path / "bioimageio-cache"
    # bioimageio.spec's own cache holds the ID map and both packages (by URL and content hash)
    assert len(list(cache.glob("entry__url_*"))) == 3

    zoo.stop()
    rank = ["rank", BY_ID, BY_DOI, "--images", str(IMAGES / "dsb2018_0[01].tif"), "--output", str(offline)]
    result = _in_new_process("-m", "bioimage_cte.cli", *rank)
    assert result.returncode == ExitCode.OK, result.stderr
    assert _ranked(offline) == scores  # the same packages, the same seeded scores


@pytest.mark.slow
def test_a_package_served_as_rdf_yaml_is_packed_and_found_again_offline(zoo, tmp_path):
    (source,) = find_models([BY_RDF])
    assert (source.kind, source.name, source.source) == ("id", BY_RDF, BY_RDF)
    with zipfile.ZipFile(source.location) as zf:
        assert {"rdf.yaml", "weights.pt"} <= set(zf.namelist())
    zoo.stop()
    code = f"from bioimage_cte.zoo.sources import find_models; print(find_models([{BY_RDF!r}]))"
    result = _in_new_process("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([source])
    # offline, an unknown ID is looked up in the cached map, and the message says the map is the cached one
    code = ("from bioimage_cte.zoo.sources import find_models\n"
            "try: find_models(['no-such-model'])\nexcept Exception as e: print(e)")
    result = _in_new_process("-c", code)
    assert result.stdout.startswith(f"zoo ID no-such-model is not in the ID map cached from {zoo.url}/id_map.json "
                                    "(offline: "), result.stdout + result.stderr


def test_an_unknown_id_is_one_line_naming_the_id_map(zoo):
    with pytest.raises(InvalidModelError) as info:
        find_models(["nuclei-smal-bright"])
    message = str(info.value)
    assert message == (
        f"zoo ID nuclei-smal-bright is not in {zoo.url}/id_map.json (did you mean nuclei-small-bright, "
        "nuclei-small-bright/1.2?); check the ID on bioimage.io, or pass a package folder, .zip or URL"
    )


def test_an_unknown_id_in_a_rank_is_that_models_failure_in_one_line(zoo, tmp_path):
    result = runner.invoke(
        app, ["rank", "no-such-model", "--images", str(IMAGES / "dsb2018_00.tif"), "--time-limit", "0"]
    )
    assert result.exit_code == ExitCode.NOTHING_RANKED, result.output
    (line,) = [li for li in result.output.splitlines() if "no-such-model" in li and "failed" in li]
    assert f"zoo ID no-such-model is not in {zoo.url}/id_map.json" in line


def test_offline_without_a_cached_id_map_says_so_in_one_line(zoo, tmp_path):
    zoo.stop()
    with pytest.raises(InvalidModelError) as info:
        find_models([BY_ID])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot resolve zoo IDs: the bioimage.io ID map {zoo.url}/id_map.json cannot be read (")
    assert message.endswith(
        f"none is cached in {tmp_path / 'bioimageio-cache'}; connect to the internet (or set "
        "BIOIMAGEIO_ID_MAP), or pass a package folder, .zip or URL"
    )


def test_a_local_folder_named_like_an_id_is_that_folder(zoo, tmp_path, monkeypatch):
    folder = tmp_path / "nuclei-small-bright"
    with zipfile.ZipFile(ZOO / "nuclei-small-bright.zip") as zf:
        zf.extractall(folder)
    monkeypatch.chdir(tmp_path)
    (source,) = find_models(["nuclei-small-bright"])
    assert source.kind == "folder"
