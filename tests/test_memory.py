"""Memory stays bounded: rank_models streams images from disk and holds one model at a time (real models).

The peak-memory benchmark is ``benchmarks/memory.py``; these checks are its cheap, deterministic part.
"""

from __future__ import annotations

import gc
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from bioimage_cte.cte.estimators import CTEDropout
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.scoring import rank_models
from bioimage_cte.zoo.sources import find_models

pytestmark = pytest.mark.slow

MODELS = ("weak-nuclei-tiny", "nuclei-small-bright", "em-vesicles")


def _networks() -> list[torch.nn.Module]:
    """Every torch network alive in this process, or dead but not yet freed: modules that are nobody's child."""
    modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
    children = {id(c) for m in modules for c in m.children()}
    return [m for m in modules if id(m) not in children]


def _open_zips() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, zipfile.ZipFile) and o.fp is not None)


def test_rank_models_holds_one_model_at_a_time_without_the_garbage_collector(zoo_packages, dsb_images):
    sources = find_models([p for p in zoo_packages if p.stem in MODELS])
    seen: list[tuple[str, int, int]] = []  # (model about to load, networks alive, packages open)
    during: list[int] = []
    gc.collect()
    baseline = len(_networks())
    gc.disable()  # what is not freed by reference counting stays visible: no lucky collection hides a leak
    try:
        # in this process, where the networks can be counted (with a time limit each model runs in a child process,
        # whose memory ends with it)
        results, failures = rank_models(sources, dsb_images[:2], [CTEDropout()], RankOptions(time_limit=0),
                                        on_model=lambda s: seen.append((s.name, len(_networks()), _open_zips())),
                                        on_image=lambda: during.append(len(_networks())))
    finally:
        gc.enable()
    assert failures == [] and len(results) == len(MODELS)
    # before each model loads, every earlier model's network and package is released
    assert [(n, alive - baseline) for n, alive, _ in seen] == [(s.name, 0) for s in sources], seen
    assert max(z for _, _, z in seen[1:]) <= 1, f"packages of finished models still open: {seen}"
    assert set(during) == {baseline + 1}, f"networks alive while scoring: {during}"


def test_images_are_read_one_at_a_time(tmp_path: Path, package: Path, dsb_images):
    # the second image does not exist when the ranking starts: it appears once the first image is scored, which
    # only works if images are read from disk as they are needed, never all up front
    first, second = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copy(dsb_images[0], first)
    created = []

    def on_image() -> None:
        if not second.exists():
            shutil.copy(dsb_images[1], second)
            created.append(True)

    # in this process: the second image appears on the first image's tick, before this process reads it
    results, failures = rank_models(find_models([package]), [first, second], [CTEDropout()], RankOptions(time_limit=0),
                                    on_image=on_image)
    assert failures == [], failures
    assert created == [True] and len(results[0].per_image["cte-dropout"]) == 2
