"""Writing transferability entries onto real demo-zoo packages (zip and folder), and refusing bad cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from ruyaml import YAML

from bioimage_cte.base import fileutils
from bioimage_cte.base.errors import (
    AnnotationError,
    InvalidImageError,
    InvalidModelError,
    PackageChangedError,
    WriteError,
)
from bioimage_cte.outputs.annotate import (
    TransferabilityEntry,
    annotate_from_ranking,
    annotate_package,
    entries_from_ranking,
    read_rdf,
    read_transferability,
)
from bioimage_cte.predict.images import dataset_fingerprint
from bioimage_cte.zoo import packages

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DSB = ROOT / "resources" / "data" / "dsb2018" / "images"
RANKED = ("nuclei-small-bright", "weak-nuclei-tiny", "nuclei-dim-blurry")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(target: str, score: float = 0.9, rank: int = 1) -> TransferabilityEntry:
    return TransferabilityEntry(target=target, target_fingerprint="f" * 64, estimator="cte-dropout",
                                settings={"strength": 0.2, "consistency": "hard"}, score=score, rank=rank, n_models=3,
                                n_images=2, date="2025-01-02T03:04:05+00:00", bioimage_cte_version="0.1.0")


def _entries_of(zip_path: Path) -> list[dict]:
    with zipfile.ZipFile(zip_path) as zf:
        rdf = YAML(typ="safe").load(zf.read("rdf.yaml"))
    return rdf["config"]["bioimage_cte"]["transferability"]


@pytest.fixture()
def zip_package(tmp_path: Path) -> Path:
    dest = tmp_path / "pkgs" / "nuclei-small-bright.zip"
    dest.parent.mkdir()
    shutil.copyfile(ZOO / "nuclei-small-bright.zip", dest)
    return dest


@pytest.fixture()
def folder_package(tmp_path: Path) -> Path:
    dest = tmp_path / "folders" / "nuclei-small-bright"
    with zipfile.ZipFile(ZOO / "nuclei-small-bright.zip") as zf:
        zf.extractall(dest)
    return dest


@pytest.fixture(scope="module")
def ranking_file(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A real CTE ranking of three demo packages (copied, so they can be annotated) on two DSB images."""
    from bioimage_cte.cte.estimators import CTEDropout
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.ranking import build_ranking, ranking_json
    from bioimage_cte.run.scoring import rank_models
    from bioimage_cte.zoo.sources import find_models

    folder = tmp_path_factory.mktemp("ranked")
    for name in RANKED:
        shutil.copyfile(ZOO / f"{name}.zip", folder / f"{name}.zip")
    images = sorted(DSB.glob("*.tif"))[:2]
    cwd = Path.cwd()
    os.chdir(folder)  # ranked as `bioimage-cte rank a.zip b.zip ...` run in that folder: relative sources
    try:
        results, failures = rank_models(find_models([f"{name}.zip" for name in RANKED]), images, [CTEDropout()],
                                        RankOptions())
    finally:
        os.chdir(cwd)
    payload = ranking_json(build_ranking(results, CTEDropout(), failures=failures), RankOptions(), images=str(DSB),
                           n_images=len(images))
    path = folder / "ranking.json"
    path.write_text(json.dumps(payload))
    return path, images


def test_dataset_fingerprint_depends_on_names_and_bytes_not_order_or_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.tif").write_bytes(b"one")
        (folder / "y.tif").write_bytes(b"two")
    fp = dataset_fingerprint([a / "x.tif", a / "y.tif"])
    assert fp == dataset_fingerprint([b / "y.tif", b / "x.tif"])
    (b / "y.tif").write_bytes(b"twO")
    assert dataset_fingerprint([b / "x.tif", b / "y.tif"]) != fp
    (a / "y.tif").rename(a / "z.tif")
    assert dataset_fingerprint([a / "x.tif", a / "z.tif"]) != fp
    with pytest.raises(InvalidImageError, match="missing.tif"):
        dataset_fingerprint([a / "missing.tif"])


@pytest.mark.slow
def test_entries_from_a_real_ranking(ranking_file):
    path, images = ranking_file
    ranking = json.loads(path.read_text())
    entries = entries_from_ranking(ranking, target="dsb2018", fingerprint=dataset_fingerprint(images))
    assert list(entries) == [m["source"] for m in ranking["models"]]
    for model in ranking["models"]:
        entry, sha = entries[model["source"]]
        assert (entry.rank, entry.score, entry.n_models, entry.n_images) == (model["rank"], model["score"], 3, 2)
        assert sha == model["sha256"] == _sha(path.parent / model["source"])
        assert entry.estimator == "cte-dropout" and entry.settings["strength"] == 0.2
        assert not {"images", "device", "n_images", "estimator"} & set(entry.settings)  # no local paths on a card


def test_two_targets_accumulate_and_the_same_target_is_replaced(zip_package):
    original = zip_package.read_bytes()
    annotate_package(zip_package, _entry("dsb2018", 0.7, 2))
    annotate_package(zip_package, _entry("em-organelles", 0.5, 3))
    annotate_package(zip_package, _entry("dsb2018", 0.8, 1))
    entries = read_transferability(zip_package)
    assert [(e["target"], e["score"], e["rank"]) for e in entries] == [("dsb2018", 0.8, 1), ("em-organelles", 0.5, 3)]
    # the training record the package already had under config.bioimage_cte is kept
    assert read_rdf(zip_package)["config"]["bioimage_cte"]["training"]["steps"] == 500
    # backups beside the package, in their own folder
    assert not [p.name for p in zip_package.parent.iterdir() if ".bak" in p.name]
    kept = zip_package.parent / "bioimage-cte-backups"
    backups = sorted(p.name for p in kept.iterdir())
    assert backups == ["nuclei-small-bright.zip.bak", "nuclei-small-bright.zip.bak.1", "nuclei-small-bright.zip.bak.2"]
    assert (kept / "nuclei-small-bright.zip.bak").read_bytes() == original
    # only the newest three are kept
    annotate_package(zip_package, _entry("em-organelles", 0.4, 3))
    assert sorted(p.name for p in kept.iterdir()) == [f"nuclei-small-bright.zip.bak.{n}" for n in (1, 2, 3)]
    assert not list(zip_package.parent.glob(".*.tmp"))


def test_zip_round_trip_keeps_every_other_entry_identical(zip_package):
    before = zipfile.ZipFile(ZOO / "nuclei-small-bright.zip")
    annotate_package(zip_package, _entry("dsb2018"), backup=False)
    after = zipfile.ZipFile(zip_package)
    assert [i.filename for i in after.infolist()] == [i.filename for i in before.infolist()]
    for old, new in zip(before.infolist(), after.infolist(), strict=True):
        assert (new.compress_type, new.date_time, new.external_attr) == (old.compress_type, old.date_time,
                                                                         old.external_attr)
        if old.filename != "rdf.yaml":
            assert after.read(new) == before.read(old), old.filename
    old_rdf = YAML(typ="safe").load(before.read("rdf.yaml"))
    new_rdf = YAML(typ="safe").load(after.read("rdf.yaml"))
    assert list(new_rdf) == list(old_rdf)  # key order kept
    new_rdf["config"]["bioimage_cte"].pop("transferability")
    assert new_rdf == old_rdf
    assert not (zip_package.parent / "nuclei-small-bright.zip.bak").exists()


@pytest.mark.slow
def test_annotated_zip_and_folder_load_with_bioimageio(zip_package, folder_package, tmp_path):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    written = [
        annotate_package(zip_package, _entry("dsb2018")),
        annotate_package(folder_package, _entry("dsb2018")),
        annotate_package(folder_package / "rdf.yaml", _entry("nuclei-dense")),
        annotate_package(ZOO / "nuclei-small-bright.zip", _entry("dsb2018"), output=tmp_path / "out"),
    ]
    assert written[1] == written[2] == folder_package / "rdf.yaml"
    for path in written:
        descr = load_description(path, perform_io_checks=True)
        assert isinstance(descr, ModelDescr), descr.validation_summary.format()
        ours = descr.config.model_extra["bioimage_cte"]
        assert ours == descr.config.bioimage_cte
        assert {e["target"] for e in ours["transferability"]} <= {"dsb2018", "nuclei-dense"}
    assert [e["target"] for e in read_transferability(folder_package)] == ["dsb2018", "nuclei-dense"]
    kept = folder_package.parent / "bioimage-cte-backups" / folder_package.name
    assert (kept / "rdf.yaml.bak").is_file() and (kept / "rdf.yaml.bak.1").is_file()
    assert not list(folder_package.glob("*.bak*"))  # nothing added to the package itself


def test_output_folder_leaves_the_original_and_accumulates_targets(folder_package, zip_package, tmp_path):
    rdf_before = (folder_package / "rdf.yaml").read_bytes()
    zip_before = zip_package.read_bytes()
    out = tmp_path / "annotated"
    first = annotate_package(folder_package, _entry("dsb2018"), output=out)
    second = annotate_package(folder_package, _entry("em"), output=out)
    assert first == second == out / "nuclei-small-bright" / "rdf.yaml"
    assert [e["target"] for e in read_transferability(first)] == ["dsb2018", "em"]
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(p.name for p in folder_package.iterdir())
    assert annotate_package(zip_package, _entry("dsb2018"), output=out) == out / "nuclei-small-bright.zip"
    assert (folder_package / "rdf.yaml").read_bytes() == rdf_before and zip_package.read_bytes() == zip_before
    assert not list(folder_package.glob("*.bak*")) and not list(zip_package.parent.glob("*.bak*"))
    # something else under the same name in the output folder is never overwritten
    (out / "nuclei-small-bright.zip").write_bytes((ZOO / "weak-nuclei-tiny.zip").read_bytes())
    with pytest.raises(WriteError, match="is not an annotated copy"):
        annotate_package(zip_package, _entry("dsb2018"), output=out)


def test_an_interrupted_zip_write_leaves_the_original(zip_package, monkeypatch):
    original = zip_package.read_bytes()
    copy_entry = packages._copy_entry
    calls = []

    def fail_halfway(zin, zout, info, data):
        calls.append(info.filename)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway through the zip
        copy_entry(zin, zout, info, data)

    monkeypatch.setattr(packages, "_copy_entry", fail_halfway)
    with pytest.raises(KeyboardInterrupt):
        annotate_package(zip_package, _entry("dsb2018"))
    assert zip_package.read_bytes() == original
    assert sorted(p.name for p in zip_package.parent.iterdir()) == [zip_package.name]  # no temp file, no backup


def test_an_interrupted_rdf_write_leaves_the_original(folder_package, tmp_path, monkeypatch):
    rdf = folder_package / "rdf.yaml"
    original = rdf.read_bytes()
    files_before = sorted(p.name for p in folder_package.iterdir())

    def write_half(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileutils, "write_all", write_half)
    with pytest.raises(WriteError, match=f"{folder_package}.*No space left"):
        annotate_package(folder_package, _entry("dsb2018"))
    assert rdf.read_bytes() == original
    assert sorted(p.name for p in folder_package.iterdir()) == files_before
    with pytest.raises(WriteError, match="No space left"):
        annotate_package(folder_package, _entry("dsb2018"), output=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no half-copied package folder


def test_unwritable_destination(zip_package, tmp_path):
    original = zip_package.read_bytes()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match=f"{blocker}/sub") as info:
        annotate_package(zip_package, _entry("dsb2018"), output=blocker / "sub")
    assert "\n" not in str(info.value)
    assert zip_package.read_bytes() == original
    with pytest.raises(WriteError, match="omit the output folder"):
        annotate_package(zip_package, _entry("dsb2018"), output=zip_package.parent)


def test_checksum_mismatch_is_refused(zip_package):
    original = zip_package.read_bytes()
    with pytest.raises(PackageChangedError, match=f"{zip_package} changed since it was ranked.*rank again"):
        annotate_package(zip_package, _entry("dsb2018"), expected_sha256="0" * 64)
    assert zip_package.read_bytes() == original


def test_own_annotations_do_not_count_as_a_change_but_other_edits_do(folder_package):
    rdf = folder_package / "rdf.yaml"
    ranked_sha = _sha(rdf)
    annotate_package(folder_package, _entry("dsb2018"), expected_sha256=ranked_sha)
    # a second ranking made before the first annotation still applies
    annotate_package(folder_package, _entry("em"), expected_sha256=ranked_sha)
    assert {e["package_sha256"] for e in read_transferability(folder_package)} == {ranked_sha}
    text = rdf.read_text()
    assert "high SNR." in text
    rdf.write_text(text.replace("high SNR.", "high SNR, retrained."))
    edited = rdf.read_bytes()
    with pytest.raises(PackageChangedError, match="rank again"):
        annotate_package(folder_package, _entry("em"), expected_sha256=ranked_sha)
    assert rdf.read_bytes() == edited


def test_corrupt_zips_are_refused(tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes((ZOO / "weak-nuclei-tiny.zip").read_bytes()[:5000])
    with pytest.raises(InvalidModelError, match=f"{truncated} is not a valid zip"):
        annotate_package(truncated, _entry("dsb2018"))
    # a damaged weights entry is only found while the zip is copied: the CRC check stops it
    damaged = tmp_path / "damaged.zip"
    data = bytearray((ZOO / "weak-nuclei-tiny.zip").read_bytes())
    with zipfile.ZipFile(ZOO / "weak-nuclei-tiny.zip") as zf:
        info = zf.getinfo("weights.pt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    data[start:start + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match=f"{damaged} is a corrupt zip"):
        annotate_package(damaged, _entry("dsb2018"))
    assert damaged.read_bytes() == bytes(data) and truncated.stat().st_size == 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.zip", "truncated.zip"]


def test_an_rdf_that_is_not_a_model_is_refused(folder_package):
    rdf = folder_package / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace("type: model", "type: dataset"))
    before = rdf.read_bytes()
    with pytest.raises(InvalidModelError, match=f"{rdf}: RDF of type 'dataset', not a model"):
        annotate_package(folder_package, _entry("dsb2018"))
    assert rdf.read_bytes() == before
    with pytest.raises(InvalidModelError, match="unet.py: not an rdf.yaml, package folder or .zip"):
        annotate_package(folder_package / "unet.py", _entry("dsb2018"))
    with pytest.raises(InvalidModelError, match="no rdf.yaml or bioimageio.yaml in this folder"):
        annotate_package(folder_package.parent, _entry("dsb2018"))


@pytest.mark.slow
def test_yaml_1_2_values_survive(folder_package):
    """`no` and `1e-3` mean a string and a float in YAML 1.2 (bioimageio) but not in PyYAML's YAML 1.1."""
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    rdf = folder_package / "rdf.yaml"
    text = rdf.read_text().replace("  - fluorescence\n", "  - fluorescence\n  - no\n  - '1e3'\n")
    rdf.write_text(text.replace("learning_rate: 0.003", "learning_rate: 3e-3"))
    annotate_package(folder_package, _entry("dsb2018"))
    data = read_rdf(folder_package)
    assert data["tags"][-2:] == ["no", "1e3"]
    assert data["config"]["bioimage_cte"]["training"]["learning_rate"] == 0.003
    assert isinstance(load_description(rdf, perform_io_checks=True), ModelDescr)


@pytest.mark.slow
def test_annotate_from_ranking_in_place_then_second_target(ranking_file):
    path, images = ranking_file
    sources = [m["source"] for m in json.loads(path.read_text())["models"]]
    assert not Path(sources[0]).exists()  # relative to the folder rank ran in: found next to the ranking JSON
    written = annotate_from_ranking(path, target="dsb2018", images=images)
    assert written == [path.parent / s for s in sources]
    # the packages changed, but only by our entries: the same ranking annotates a second target
    assert annotate_from_ranking(path, target="dsb-copy", images=images) == written
    for package in written:
        assert [e["target"] for e in read_transferability(package)] == ["dsb2018", "dsb-copy"]
    with pytest.raises(InvalidImageError, match="ranked on 2 images but 1 were given"):
        annotate_from_ranking(path, target="dsb2018", images=images[:1])


@pytest.mark.slow
def test_annotate_from_ranking_collects_failures(ranking_file, tmp_path):
    path, images = ranking_file
    ranking = json.loads(path.read_text())
    for model in ranking["models"]:
        model["source"] = str(path.parent / model["source"])
    ranking["models"][1]["source"] = str(tmp_path / "moved-away.zip")
    ranking["models"][2]["sha256"] = "0" * 64
    broken = tmp_path / "ranking.json"
    broken.write_text(json.dumps(ranking))
    out = tmp_path / "out"
    with pytest.raises(AnnotationError, match="annotated 1 of 3 models") as info:
        annotate_from_ranking(broken, target="dsb2018", images=images, output=out)
    error = info.value
    assert "\n" not in str(error) and "moved-away.zip not found" in str(error) and "rank again" in str(error)
    assert error.written == [out / Path(ranking["models"][0]["source"]).name]
    assert set(error.failures) == {ranking["models"][1]["source"], ranking["models"][2]["source"]}


def _is_subsequence(lines: list[str], within: list[str]) -> bool:
    it = iter(within)
    return all(any(line == other for other in it) for line in lines)


@pytest.mark.slow
def test_a_commented_rdf_keeps_comments_and_layout_and_still_validates(folder_package):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    rdf = folder_package / "rdf.yaml"
    text = rdf.read_text()
    text = text.replace("name: nuclei-small-bright", "# Curated by the lab; ask before renaming.\n"
                        "name: nuclei-small-bright  # the zoo id", 1)
    text = text.replace("license: MIT", "license: MIT  # see LICENSE", 1)
    text = text.replace("tags:\n", "tags:\n  # task tags first\n", 1)
    rdf.write_text(text)
    annotate_package(folder_package, _entry("dsb2018"))
    annotate_package(folder_package, _entry("em", 0.4, 2))
    new = rdf.read_text()
    # every line of the authors' file is still there, in its order: comments, key order and list layout kept
    assert _is_subsequence(text.splitlines(), new.splitlines())
    assert "# Curated by the lab; ask before renaming." in new and "license: MIT  # see LICENSE" in new
    assert [e["target"] for e in read_transferability(folder_package)] == ["dsb2018", "em"]
    descr = load_description(rdf, perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
