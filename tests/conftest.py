"""Shared fixtures: the shipped demo zoo and targets (real files, built by examples/build_demo_zoo.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"
#: whether the test being set up or run is in the fast lane (not marked slow)
_FAST_LANE = {"now": False}


def pytest_configure(config: pytest.Config) -> None:
    """The fast lane loads no model: building a bioimageio.core model adapter, or starting a model's child process
    (where no guard of this process reaches), fails the test there."""
    from bioimageio.core._model_adapter import ModelAdapter

    from bioimage_cte.run import isolated

    build, context = ModelAdapter.__init__, isolated._context

    def guarded(self, *args, **kwargs):
        if _FAST_LANE["now"]:
            raise AssertionError("this test loads a model package: mark it @pytest.mark.slow")
        build(self, *args, **kwargs)

    def guarded_context():
        if _FAST_LANE["now"]:
            raise AssertionError("this test scores a model in a child process: mark it @pytest.mark.slow, or rank "
                                 "with time_limit=0 when it needs no model")
        return context()

    ModelAdapter.__init__ = guarded
    isolated._context = guarded_context


def pytest_runtest_setup(item: pytest.Item) -> None:
    # set before the item's fixtures, so a model loaded by a shared fixture counts against the test that needs it
    _FAST_LANE["now"] = item.get_closest_marker("slow") is None


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
