"""Zoo-shaped demo packages (3D, 2-channel, boundary, softmax, non-UNet) and their labelled 3D and 2-channel targets."""

from __future__ import annotations

import importlib.util
import math
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bioimage_cte.predict.images import list_images, load_labels, read_image, target_task, to_yx
from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

ROOT = Path(__file__).resolve().parents[1]
ZOO, DATA = ROOT / "resources" / "zoo", ROOT / "resources" / "data"
# target: (axes of its files, tag of the models made for its shape, their input axes, their input channels)
TARGETS = {"nuclei3d-medium-noisy": ("zyx", "3d", "zyx", 1), "cells2ch-medium": ("cyx", "multi-channel", "yx", 2)}
NEW = ["nuclei3d-small", "nuclei3d-large", "nuclei3d-dim", "weak-nuclei3d-undertrained", "cells2ch-unet",
       "cells2ch-instance", "cells2ch-encdec", "cells2ch-resnet", "nuclei-boundaries", "nuclei-3class"]


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as zf:
        return load_untrusted_yaml(zf.read("rdf.yaml"), where=str(package))


def _builder():
    spec = importlib.util.spec_from_file_location("build_shape_zoo", ROOT / "examples" / "build_shape_zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_shape_zoo"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NEW)
def test_new_packages_are_small_and_declare_their_shape(name: str) -> None:
    package = ZOO / f"{name}.zip"
    assert package.stat().st_size < 1_000_000
    rdf = _rdf(package)
    inputs, outputs = rdf["inputs"][0]["axes"], rdf["outputs"][0]["axes"]
    spatial = "".join(a["id"] for a in inputs if a["type"] == "space")
    channels = next(a["channel_names"] for a in inputs if a["type"] == "channel")
    out_channels = next(a["channel_names"] for a in outputs if a["type"] == "channel")
    assert spatial == ("zyx" if "3d" in rdf["tags"] else "yx")
    assert channels == (["nuclei", "membrane"] if "multi-channel" in rdf["tags"] else
                        ["nuclei"] if "3d" in rdf["tags"] else ["raw"])
    expected_out = {"nuclei-boundaries": ["boundaries"], "nuclei-3class": ["background", "nuclei", "boundary"],
                    "cells2ch-instance": ["foreground", "boundary"]}.get(name, ["foreground"])
    assert out_channels == expected_out
    post = rdf["outputs"][0]["postprocessing"][0]["id"]
    assert post == ("softmax" if name == "nuclei-3class" else "sigmoid")


@pytest.mark.parametrize("target", list(TARGETS))
def test_shape_targets_are_labelled_synthetic_and_have_four_native_candidates(target: str) -> None:
    axes, native_tag, model_axes, model_channels = TARGETS[target]
    folder = DATA / target
    assert "Synthetic data, not microscopy" in (folder / "PROVENANCE.md").read_text()
    assert "CC0-1.0" in (folder / "PROVENANCE.md").read_text()
    task = target_task(folder)
    paths = list_images(folder / "images")
    labels = load_labels(paths, folder / "labels", axes=axes)
    for path, label in zip(paths, labels, strict=True):
        raw = read_image(path)
        assert raw.ndim == 3 and label.shape == raw.shape[-label.ndim:]
        assert label.max() > 0
        if axes == "zyx":
            assert to_yx(raw, axes=axes, path=path).shape == raw.shape and label.ndim == 3
    candidates = []
    for package in ZOO.glob("*.zip"):
        rdf = _rdf(package)
        if task in rdf["tags"] and native_tag in rdf["tags"]:
            inputs = rdf["inputs"][0]["axes"]
            assert "".join(a["id"] for a in inputs if a["type"] == "space") == model_axes
            assert len(next(a["channel_names"] for a in inputs if a["type"] == "channel")) == model_channels
            candidates.append(package.name)
    assert len(candidates) >= 4, candidates


@pytest.mark.slow
def test_the_shape_builder_is_reproducible(tmp_path: Path) -> None:
    import dataclasses

    builder = _builder()
    model = dataclasses.replace(next(m for m in builder.MODELS if m.name == "nuclei-3class"), steps=2)
    weights = []
    for run in ("a", "b"):
        builder.ZOO = tmp_path / run
        with torch.random.fork_rng():
            builder.build_model(model)
        with zipfile.ZipFile(tmp_path / run / "nuclei-3class.zip") as zf:
            weights.append(zf.read("weights.pt"))
    assert weights[0] == weights[1]


@pytest.mark.slow
def test_rank_the_two_channel_target() -> None:
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    images = list_images(DATA / "cells2ch-medium" / "images")[:1]
    models = [ZOO / f"{n}.zip" for n in ("cells2ch-unet", "cells2ch-encdec", "cells2ch-resnet", "cells2ch-instance")]
    run = rank(models, images, RankOptions(axes="cyx"))
    assert sorted(s.name for s in run.ranking.scores) == ["cells2ch-encdec", "cells2ch-instance", "cells2ch-resnet",
                                                           "cells2ch-unet"]
    assert not run.ranking.failures
    assert all(0.0 <= s.score <= 1.0 for s in run.ranking.scores)


@pytest.mark.slow
def test_rank_the_3d_target_with_3d_models() -> None:
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    images = list_images(DATA / "nuclei3d-medium-noisy" / "images")[:1]
    models = [ZOO / f"{n}.zip" for n in ("nuclei3d-small", "nuclei3d-large", "nuclei3d-dim",
                                          "weak-nuclei3d-undertrained")]
    run = rank(models, images, RankOptions(axes="zyx"))
    assert len(run.ranking.scores) == 4 and not run.ranking.failures
    for score in run.ranking.scores:  # a model that finds no nucleus in the volume has no score, and says so
        assert 0.0 <= score.score <= 1.0 or (math.isnan(score.score) and score.n_empty == score.n_images)
        assert score.output["scored"] == "foreground"
    assert sum(math.isfinite(s.score) for s in run.ranking.scores) >= 3
