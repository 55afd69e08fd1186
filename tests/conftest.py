"""Shared fixtures: the shipped demo zoo and targets (real files, built by examples/build_demo_zoo.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
#: whether the test being set up or run is in the fast lane (not marked slow)
_FAST_LANE = {"now": False}


def pytest_configure(config: pytest.Config) -> None:
    """The fast lane loads no model: building any bioimageio.core model adapter there fails the test."""
    from bioimageio.core._model_adapter import ModelAdapter

    build = ModelAdapter.__init__

    def guarded(self, *args, **kwargs):
        if _FAST_LANE["now"]:
            raise AssertionError("this test loads a model package: mark it @pytest.mark.slow")
        build(self, *args, **kwargs)

    ModelAdapter.__init__ = guarded


def pytest_runtest_setup(item: pytest.Item) -> None:
    # set before the item's fixtures, so a model loaded by a shared fixture counts against the test that needs it
    _FAST_LANE["now"] = item.get_closest_marker("slow") is None
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
