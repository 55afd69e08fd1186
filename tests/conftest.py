"""Shared fixtures: the shipped demo zoo and targets (real files, built by examples/build_demo_zoo.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"


@pytest.fixture(scope="session")
def zoo_packages() -> list[Path]:
    packages = sorted(ZOO.glob("*.zip"))
    assert len(packages) >= 8, f"demo zoo missing under {ZOO}: run python examples/build_demo_zoo.py"
    return packages


@pytest.fixture(scope="session")
def dsb_images() -> list[Path]:
    return sorted((DATA / "dsb2018" / "images").glob("*.tif"))


@pytest.fixture(scope="session")
def package() -> Path:
    """A small foreground model (fast to load and run)."""
    return ZOO / "nuclei-small-bright.zip"


@pytest.fixture(scope="session")
def instance_package() -> Path:
    """A model with foreground and boundary outputs."""
    return ZOO / "cells-brightfield-instance.zip"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The bad-input corpus (tests/corpus.py), built once per session."""
    from corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))
