"""resources/spec-examples is the specification's example models, unchanged: every file listed, every hash matching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "resources" / "spec-examples"
#: files that describe the copy rather than belong to the upstream example folders
OWN_FILES = {"provenance.json", "README.md", "LICENSE"}


def _provenance() -> dict:
    return json.loads((EXAMPLES / "provenance.json").read_text())


def test_every_file_matches_its_recorded_sha256() -> None:
    files = _provenance()["files"]
    assert len(files) >= 45  # 48 files over five example models when this was written
    wrong = {f["path"]: f["sha256"] for f in files
             if hashlib.sha256((EXAMPLES / f["path"]).read_bytes()).hexdigest() != f["sha256"]}
    assert not wrong, f"changed since they were copied: {sorted(wrong)}"


def test_every_file_is_listed_with_its_upstream_path() -> None:
    provenance = _provenance()
    listed = {f["path"] for f in provenance["files"]}
    present = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file()} - OWN_FILES
    assert present == listed, f"unlisted: {sorted(present - listed)}; missing: {sorted(listed - present)}"
    assert provenance["repository"] == "https://github.com/bioimage-io/spec-bioimage-io"
    assert len(provenance["commit"]) == 40
    for f in provenance["files"]:
        assert f["source_path"] == f"example_descriptions/models/{f['path']}"


def test_licence_is_kept() -> None:
    assert "MIT" in (EXAMPLES / "LICENSE").read_text()
    assert "MIT" in _provenance()["licence"]
