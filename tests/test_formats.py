"""Every weights format on real demo packages: grey-box on onnx and torchscript, the weight choice and its reason,
Keras black-box, and the one-line reasons when a runtime is missing.

The format variants in resources/zoo are exported from trained demo networks (bioimage_cte.demozoo.formats):
``nuclei-versatile-onnx`` is ``nuclei-versatile``'s network, so both formats must give the same scores.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bioimage_cte.base.errors import InvalidModelError, UntrustedCodeError
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.zoo.trust import CodePolicy

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DSB = sorted((ROOT / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))
ONNX_ONLY = ZOO / "nuclei-versatile-onnx.zip"
TORCHSCRIPT_ONLY = ZOO / "nuclei-dim-blurry-torchscript.zip"
OWN_ARCH = ZOO / "nuclei-dense-textured-own-arch.zip"
KERAS = ZOO / "nuclei-small-bright-keras.zip"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tifffile.imread(DSB[0]).astype(np.float32)


def _descr(path: Path):
    from bioimage_cte.zoo.models import load_model

    return load_model(str(path))


def _without(monkeypatch, *modules: str) -> None:
    """As if ``modules`` were not installed (what bioimage_cte.zoo.weights asks before importing them)."""
    from bioimage_cte.zoo import weights

    installed = weights._installed
    monkeypatch.setattr(weights, "_installed", lambda m: m not in modules and installed(m))


# --- the ONNX graph rewrite, on a graph exported from a small torch UNet ------------------------------------------


@pytest.fixture(scope="module")
def onnx_model():
    import onnx
    import torch

    from bioimage_cte.demozoo.archs.unet import UNet2d
    from bioimage_cte.demozoo.packaging import _export_onnx

    torch.manual_seed(0)
    net = UNet2d(features=4, depth=2).eval()
    buffer = io.BytesIO()
    _export_onnx(net, torch.zeros(1, 1, 64, 64), buffer)
    return onnx.load_from_string(buffer.getvalue())


def test_feature_tensor_is_the_bottleneck_output_found_by_shape(onnx_model):
    from bioimage_cte.predict.onnx_greybox import find_feature_tensor, intermediate_shapes

    probe = np.zeros((1, 1, 64, 64), np.float32)
    name, shape = find_feature_tensor(onnx_model, probe)
    # depth 2, 4 features: the bottleneck has 16 channels at 1/4 of the input size, and is the last such tensor
    assert shape == (1, 16, 16, 16)
    shapes = intermediate_shapes(onnx_model, probe)
    same = [n for n in shapes if shapes[n] == shape]
    assert len(same) >= 2 and name == [n.output[0] for n in onnx_model.graph.node if n.output[0] in same][-1]
    # the graph's own names are not used to find it: renamed tensors give the same node
    renamed = _renamed(onnx_model)
    assert find_feature_tensor(renamed, probe)[1] == shape


def _renamed(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {n: f"t{i}" for i, node in enumerate(out.graph.node) for n in node.output if n}
    keep = {o.name for o in out.graph.output}
    for node in out.graph.node:
        node.name = ""
        node.input[:] = [names.get(n, n) if n not in keep else n for n in node.input]
        node.output[:] = [names.get(n, n) if n not in keep else n for n in node.output]
    return out


def test_mask_input_multiplies_the_feature_tensor_in_one_session(onnx_model):
    import onnxruntime as ort

    from bioimage_cte.predict.onnx_greybox import MASK_INPUT, find_feature_tensor, insert_channel_mask

    x = np.random.default_rng(0).standard_normal((1, 1, 64, 64)).astype(np.float32)
    name, shape = find_feature_tensor(onnx_model, x)
    plain = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    masked = ort.InferenceSession(insert_channel_mask(onnx_model, name, shape[1]).SerializeToString(),
                                  providers=["CPUExecutionProvider"])
    (clean,) = plain.run(None, {"raw": x})
    ones = np.ones((1, shape[1], 1, 1), np.float32)
    assert np.array_equal(masked.run(None, {"raw": x, MASK_INPUT: ones})[0], clean)
    zeros = np.zeros_like(ones)
    dropped = masked.run(None, {"raw": x, MASK_INPUT: zeros})[0]
    assert not np.allclose(dropped, clean)
    # the same session takes any mask: dropping no channel again gives the clean output
    assert np.array_equal(masked.run(None, {"raw": x, MASK_INPUT: ones})[0], clean)


# --- grey-box on the onnx-only and torchscript-only packages ------------------------------------------------------


@pytest.mark.slow
def test_onnx_greybox_at_p0_is_bit_identical_to_the_unmodified_onnx_model(image):
    from bioimage_cte.predict.dropout import FeatureDropout
    from bioimage_cte.predict.factory import make_predictor

    descr = _descr(ONNX_ONLY)
    plain = make_predictor(descr, greybox=False, name="plain", weight_format="onnx")  # bioimageio.core's ONNX adapter
    grey = make_predictor(descr, name="grey", greybox=True)
    assert grey.weights.format == "onnx" and grey.weights.access == "grey-box"
    expected = plain.predict(image).foreground
    assert np.array_equal(grey.predict(image).foreground, expected)
    with grey.perturbed(FeatureDropout(0.0, seed=4)):
        assert np.array_equal(grey.predict(image).foreground, expected)
    with grey.perturbed(FeatureDropout(0.3, seed=4)):
        dropped = grey.predict(image).foreground
    assert not np.allclose(dropped, expected, atol=1e-3)
    assert np.array_equal(grey.predict(image).foreground, expected)  # clean again after the block


def _scores(location: Path, **options) -> list[float]:
    from bioimage_cte.cte.registry import make_estimator
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.scoring import score_model
    from bioimage_cte.zoo.sources import find_models

    (source,) = find_models([location])
    opts = RankOptions(seed=3, **options)
    result = score_model(source, DSB, [make_estimator("cte-dropout")], opts)
    assert not result.failures, result.failures
    return result.per_image["cte-dropout"], result


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "trained"), [(ONNX_ONLY, "nuclei-versatile"),
                                                  (TORCHSCRIPT_ONLY, "nuclei-dim-blurry")])
def test_graph_greybox_score_matches_the_state_dict_score_of_the_same_network(variant, trained):
    graph, graph_result = _scores(variant)
    state, state_result = _scores(ZOO / f"{trained}.zip")
    assert graph_result.weights["access"] == state_result.weights["access"] == "grey-box"
    assert state_result.weights["format"] == "pytorch_state_dict" and state_result.layer == "bottleneck"
    assert graph_result.weights["format"] == variant.stem.rsplit("-", 1)[1]
    assert "bottleneck" in graph_result.layer  # the exporter's tensor name: found by shape, named by torch
    # the same channels are dropped (one mask generator); only float arithmetic differs
    assert abs(float(np.median(graph)) - float(np.median(state))) < 0.02
    assert np.allclose(graph, state, atol=0.02)


@pytest.mark.slow
def test_own_architecture_uses_onnx_by_default_and_the_state_dict_when_trusted(image):
    from bioimage_cte.predict.factory import make_predictor

    descr = _descr(OWN_ARCH)
    by_default = make_predictor(descr, name="own", greybox=True)
    assert by_default.weights.format == "onnx"
    assert "onnx needs no package code" in by_default.weights.reason and "--trust-code" in by_default.weights.reason
    trusted = make_predictor(descr, name="own", greybox=True, code_policy=CodePolicy(trust_code=True))
    assert trusted.weights.format == "pytorch_state_dict" and trusted.layer is None  # traced on first use
    with trusted.perturbed(FeatureDropout(0.2, seed=0)):
        trusted.predict(image)
    assert trusted.layer == "bottleneck"
    assert "allowed by --trust-code" in trusted.weights.reason
    asked = make_predictor(descr, name="own", greybox=True, weight_format="onnx",
                           code_policy=CodePolicy(trust_code=True))
    assert (asked.weights.format, asked.weights.reason) == ("onnx", "asked for with --weight-format")
    a, b = by_default.predict(image).foreground, trusted.predict(image).foreground
    assert np.abs(a - b).max() < 1e-4
    with pytest.raises(UntrustedCodeError, match="--weight-format pytorch_state_dict|does not run by default"):
        make_predictor(descr, name="own", greybox=True, weight_format="pytorch_state_dict")


# --- reasons when a runtime is missing ----------------------------------------------------------------------------


def test_without_onnxruntime_each_graph_format_gives_a_one_line_reason(monkeypatch):
    from bioimage_cte.zoo.weights import greybox_weights

    _without(monkeypatch, "onnxruntime")
    with pytest.raises(InvalidModelError) as info:
        greybox_weights(_descr(TORCHSCRIPT_ONLY), CodePolicy(), name="ts.zip")
    message = str(info.value)
    assert "\n" not in message and message.startswith("ts.zip: no grey-box access: ")
    assert "torchscript grey-box needs onnxruntime not installed: pip install 'bioimage-cte[onnx]'" in message
    # the own-architecture package: its state dict needs --trust-code and its onnx weights the extra: skipped
    with pytest.raises(UntrustedCodeError) as info:
        greybox_weights(_descr(OWN_ARCH), CodePolicy(), name="own.zip")
    message = str(info.value)
    assert "\n" not in message and "pass --trust-code" in message and "pip install 'bioimage-cte[onnx]'" in message
    # what the user allowed still runs without the extra
    choice = greybox_weights(_descr(OWN_ARCH), CodePolicy(trust_code=True), name="own.zip")
    assert choice.format == "pytorch_state_dict"


def test_keras_weights_without_tensorflow_are_one_line_never_a_crash(monkeypatch):
    from bioimage_cte.predict.factory import make_predictor

    _without(monkeypatch, "tensorflow")
    descr = _descr(KERAS)
    with pytest.raises(InvalidModelError) as info:
        make_predictor(descr, name="keras.zip", greybox=False)
    assert str(info.value) == ("keras.zip: its keras_hdf5 weights cannot run here (tensorflow not installed: "
                               "pip install 'bioimage-cte[tensorflow]')")
    with pytest.raises(InvalidModelError, match=r"keras.zip: no grey-box access: .*keras_hdf5 weights, which run "
                                                r"black-box only; use an input-perturbation estimator"):
        make_predictor(descr, name="keras.zip", greybox=True)


@pytest.mark.slow
def test_keras_weights_run_black_box_through_tensorflow(image):
    pytest.importorskip("tensorflow", reason="keras_hdf5 weights need tensorflow: pip install '.[tensorflow]'")
    from bioimage_cte.predict.factory import make_predictor

    keras_model = make_predictor(_descr(KERAS), name="keras", greybox=False)
    assert keras_model.weights.to_json() == {"format": "keras_hdf5", "access": "black-box",
                                             "reason": "bioimageio.core's priority order among the formats present"}
    torch_model = make_predictor(_descr(ZOO / "nuclei-small-bright.zip"), name="torch", greybox=False)
    assert np.abs(keras_model.predict(image).foreground - torch_model.predict(image).foreground).max() < 1e-4


# --- the builder and the ranking -------------------------------------------------------------------------------


@pytest.mark.slow
def test_variant_is_the_trained_network_again(tmp_path):
    from bioimage_cte.demozoo.formats import FORMAT_VARIANTS, build_variant

    (variant,) = [v for v in FORMAT_VARIANTS if v.name == ONNX_ONLY.stem]
    built = build_variant(variant, ZOO, tmp_path / "v.zip")
    with zipfile.ZipFile(built) as new, zipfile.ZipFile(ZOO / f"{variant.source}.zip") as old:
        # the same network: its test output again, up to float summation order (thread count)
        expected = np.load(io.BytesIO(old.read("test_output.npy")))
        assert np.allclose(np.load(io.BytesIO(new.read("test_output.npy"))), expected, atol=1e-5)
        assert new.read("weights.onnx") == zipfile.ZipFile(ONNX_ONLY).read("weights.onnx")


@pytest.mark.slow
def test_rank_scores_every_format_package_grey_box_and_says_why_not(tmp_path):
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for package in (ONNX_ONLY, TORCHSCRIPT_ONLY, OWN_ARCH, KERAS, ZOO / "nuclei-versatile.zip"):
        shutil.copy(package, zoo)
    images = tmp_path / "images"
    images.mkdir()
    for path in DSB[:2]:
        shutil.copy(path, images)
    out = tmp_path / "ranking.json"
    # the grey-box estimator: the default (tta+consensus) runs every model black-box
    result = CliRunner().invoke(app, ["rank", str(zoo), "--tag", "nuclei", "--images", str(images),
                                      "--estimator", "cte-dropout", "--output", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    weights = {m["name"]: m["weights"] for m in payload["models"]}
    assert {n: (w["format"], w["access"]) for n, w in weights.items()} == {
        "nuclei-versatile-onnx": ("onnx", "grey-box"),
        "nuclei-dim-blurry-torchscript": ("torchscript", "grey-box"),
        "nuclei-dense-textured-own-arch": ("onnx", "grey-box"),
        "nuclei-versatile": ("pytorch_state_dict", "grey-box"),
    }
    assert all(w["reason"] for w in weights.values())
    (keras,) = payload["failures"]
    assert keras["name"] == "nuclei-small-bright-keras" and keras["stage"] == "estimator"
    assert "keras_hdf5 weights, which run black-box only" in keras["reason"]
    assert "nuclei-small-bright-keras" in result.output and "black-box only" in result.output


@pytest.mark.slow
def test_stardist_shaped_keras_package_is_ranked_on_its_probability_output(tmp_path):
    """The StarDist-shaped TensorFlow package (prob + 32 ray distances) ranks beside the torch network its prob
    head comes from: the prob output is scored, and gives that network's score again."""
    pytest.importorskip("tensorflow", reason="keras_hdf5 weights need tensorflow: pip install '.[tensorflow]'")
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app
    from bioimage_cte.demozoo.stardist import STARDIST_NAME, STARDIST_SOURCE

    out = tmp_path / "ranking.json"
    result = CliRunner().invoke(app, ["rank", str(ZOO / f"{STARDIST_NAME}.zip"), str(ZOO / f"{STARDIST_SOURCE}.zip"),
                                      "--images", str(DSB[0].parent / "dsb2018_0[01].tif"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["failures"] == []
    models = {m["name"]: m for m in payload["models"]}
    stardist = models[STARDIST_NAME]
    assert stardist["weights"]["format"] == "keras_hdf5" and stardist["weights"]["access"] == "black-box"
    assert stardist["output"] == {"tensor": "prob", "channel": "prob", "index": 0, "scored": "foreground",
                                  "how": "output prob of 2 (the probability one); channel named 'prob' as foreground",
                                  "scale": {"y": 1.0, "x": 1.0}}  # prob is on the input's grid
    # the same probability network in Keras and in torch (outputs equal to 1e-3): the same consistency, up to the
    # few pixels whose probability sits at the 0.5 threshold
    assert 0.5 < stardist["score"] <= 1
    assert abs(stardist["score"] - models[STARDIST_SOURCE]["score"]) < 0.01
