"""Running any model shape: 3D models, fixed-size inputs, multi-channel inputs, the output the zoo writes.

The packages are real (bioimageio spec 0.5, built by bioimage_cte.demozoo.shapes around a seeded, untrained
TinyNet whose receptive field, 5 px, is within every halo): tiled and one-pass predictions must agree exactly,
and a prediction can be recomputed with the torch network itself.
"""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from bioimage_cte.base.errors import InvalidImageError, InvalidModelError
from bioimage_cte.demozoo.shapes import OutputSpec, build_shaped_package
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.factory import make_predictor
from bioimage_cte.predict.images import load_target, tiff_axes
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.models import load_model
from bioimage_cte.zoo.readout import choose_readout

pytestmark = pytest.mark.slow  # builds and runs real packages through bioimageio.core and torch


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("shaped")
    fg_bd = ("foreground", "boundary")
    specs = {
        "3d": dict(spatial="zyx"),
        "2d": dict(),
        "fixed": dict(size=64, halo=8),
        "2ch": dict(in_channels=("nuclei", "membrane")),
        "stardist": dict(outputs=(OutputSpec("dist", tuple(f"ray{i}" for i in range(8)), "none"),
                                  OutputSpec("prob", ("prob",)))),
        "boundary": dict(outputs=(OutputSpec("mask", ("boundaries",)),)),
        "affinity": dict(outputs=(OutputSpec("affs", ("aff_y", "aff_x")),)),
        "softmax": dict(outputs=(OutputSpec("classes", ("background", "cells", "boundary"), "softmax"),)),
        "unnamed": dict(outputs=(OutputSpec("out", ("c0", "c1"), "softmax"),)),
        "fgbd": dict(outputs=(OutputSpec("prob", fg_bd),)),
    }
    return {key: build_shaped_package(root / f"{key}.zip", seed=i, name=f"tiny {key}", **kw)
            for i, (key, kw) in enumerate(specs.items())}


def _descr(packages, key):
    return load_model(str(packages[key]))


def _torch_reference(descr, image: np.ndarray, pad: int) -> np.ndarray:
    """The network run by hand on the whole reflect-padded image: what any tiling must reproduce."""
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    net = load_torch_model(descr.weights.pytorch_state_dict, devices=["cpu"]).eval()
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(pad, pad)] * 2, mode="reflect")
    with torch.no_grad():
        out = torch.sigmoid(net(torch.from_numpy(padded)[None]))[0, 0].numpy()
    return out[..., pad:-pad, pad:-pad]


def test_3d_model_runs_natively_on_a_stack_and_tiles_with_its_halo_exactly(packages):
    descr = _descr(packages, "3d")
    stack = np.random.default_rng(0).random((20, 50, 70), dtype=np.float32)
    with make_predictor(descr, greybox=False, name="3d") as predictor:
        whole = predictor.predict(stack)
        predictor.max_tile = 40  # blocks of at most 1600 voxels: many tiles along every axis
        tiled = predictor.predict(stack)
        with pytest.raises(InvalidImageError, match="3D model .* rank 3D models on z-stacks"):
            predictor.predict(stack[0])
    assert predictor.spatial == "zyx" and whole.foreground.shape == (20, 50, 70)
    np.testing.assert_allclose(tiled.foreground, whole.foreground, atol=1e-6)
    # one slice of a 3D model's output depends on its neighbours: it is not a 2D model run slice-wise
    assert not np.allclose(whole.foreground[5], whole.foreground[6], atol=1e-3)


def test_greybox_3d_model_finds_a_layer_and_drops_channels_in_3d(packages):
    stack = np.random.default_rng(1).random((16, 40, 40), dtype=np.float32)
    with make_predictor(_descr(packages, "3d"), greybox=True, weight_format="pytorch_state_dict",
                        name="3d") as predictor:
        clean = predictor.predict(stack).foreground
        with predictor.perturbed(FeatureDropout(0.5, seed=3)):
            perturbed = predictor.predict(stack).foreground
    assert predictor.layer == "body"  # TinyNet's feature extractor: the probe pass ran with a 3D input
    assert perturbed.shape == clean.shape == (16, 40, 40) and np.abs(perturbed - clean).mean() > 1e-4


def test_2d_model_runs_slice_by_slice_on_a_stack(packages):
    stack = np.random.default_rng(2).random((3, 40, 52), dtype=np.float32)
    with make_predictor(_descr(packages, "2d"), greybox=False, name="2d") as predictor:
        out = predictor.predict(stack).foreground
        slices = [predictor.predict(s).foreground for s in stack]
    assert out.shape == (3, 40, 52)
    for z in range(3):
        np.testing.assert_array_equal(out[z], slices[z])


def test_fixed_64_input_runs_on_larger_and_smaller_images(packages):
    descr = _descr(packages, "fixed")
    assert {str(a.id): a.size for a in descr.inputs[0].axes if str(a.id) in "yx"} == {"y": 64, "x": 64}
    image = np.random.default_rng(3).random((100, 150), dtype=np.float32)
    with make_predictor(descr, greybox=False, name="fixed") as predictor:
        large = predictor.predict(image).foreground
        small = predictor.predict(image[:40, :30]).foreground
    assert large.shape == (100, 150) and small.shape == (40, 30)
    # tiles of 64 with a halo of 8 reproduce the network run on the whole image
    np.testing.assert_allclose(large, _torch_reference(descr, image[None], 8), atol=1e-5)
    np.testing.assert_allclose(small, _torch_reference(descr, image[None, :40, :30], 8), atol=1e-5)


def test_two_channel_model_gets_the_selected_channels_in_order(packages, tmp_path):
    descr = _descr(packages, "2ch")
    rgb = (np.random.default_rng(4).random((48, 56, 3)) * 255).astype(np.uint8)
    path = tmp_path / "rgb.png"
    iio.imwrite(path, rgb)
    with make_predictor(descr, greybox=False, name="2ch") as predictor:
        assert predictor.in_channels == 2
        image = load_target(path, channels=(2, 0), n_channels=2, model="2ch")
        np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0)[[2, 0]].astype(np.float32))
        chosen = predictor.predict(image).foreground
        swapped = predictor.predict(image[::-1].copy()).foreground
    assert chosen.shape == (48, 56)
    np.testing.assert_allclose(chosen, _torch_reference(descr, image, 4), atol=1e-5)
    assert not np.allclose(chosen, swapped, atol=1e-3)  # the channel order reaches the network


def test_channel_mismatch_is_one_line_naming_model_expectation_and_image(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    path = tmp_path / "rgb.png"
    iio.imwrite(path, rgb)
    with pytest.raises(InvalidImageError) as e:
        load_target(path, n_channels=2, model="zoo/two-channel.zip")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("zoo/two-channel.zip: model expects 2 input channels but image")
    assert "has 3; pick them with --channels" in message
    grey = tmp_path / "grey.npy"
    np.save(grey, np.zeros((32, 32), np.float32))
    with pytest.raises(InvalidImageError, match="expects 2 input channels but image .* has 1"):
        load_target(grey, n_channels=2, model="m")
    with pytest.raises(InvalidImageError, match=r"has 3 channels \(0..2\) but --channels asks for 5"):
        load_target(path, channels=(0, 5), n_channels=2)
    # single-channel models: the first selected channel, or the average as before
    assert load_target(path, channels=(1, 2)).shape == (32, 32)


def test_multichannel_tiff_axes_come_from_its_metadata(tmp_path):
    stack = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(3, 2, 16, 16)  # z, c, y, x
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZCYX"})
    assert tiff_axes(path) == "zcyx"
    image = load_target(path, n_channels=2)
    assert image.shape == (2, 3, 16, 16)  # channels first, then z
    np.testing.assert_array_equal(image[1, 2], stack[2, 1])


def test_output_choice_from_names(packages):
    def readout(key, **kw):
        return choose_readout(_descr(packages, key), **kw)

    stardist = readout("stardist")
    assert (stardist.tensor, stardist.foreground) == ("prob", 0) and "output prob of 2" in stardist.how
    boundary = readout("boundary")
    assert boundary.scored == "boundary" and boundary.boundary == 0
    assert readout("affinity").affinities == (0, 1) and readout("affinity").scored == "boundary"
    softmax = readout("softmax")
    assert softmax.multiclass and (softmax.foreground, softmax.boundary) == (1, 2)
    unnamed = readout("unnamed")
    assert unnamed.multiclass and unnamed.foreground is None and "1 - P('c0')" in unnamed.how
    fgbd = readout("fgbd")
    assert (fgbd.foreground, fgbd.boundary) == (0, 1)
    # --output-channel: a channel name, a tensor id, TENSOR:CHANNEL or an index
    assert readout("fgbd", output_channel="boundary").foreground == 1
    assert readout("fgbd", output_channel="1").foreground == 1
    assert readout("stardist", output_channel="dist:ray3").tensor == "dist"
    assert readout("stardist", output_channel="dist:ray3").foreground == 3
    assert readout("stardist", output_channel="dist").tensor == "dist"
    with pytest.raises(InvalidModelError, match=r"matches no output .* outputs are dist \(8 channels\); prob \(prob\)"):
        readout("stardist", output_channel="nuclei")


def test_predictions_carry_the_chosen_maps(packages):
    image = np.random.default_rng(5).random((40, 48), dtype=np.float32)
    with make_predictor(_descr(packages, "softmax"), greybox=False, name="softmax") as predictor:
        multi = predictor.predict(image)
    assert multi.classes is not None and multi.classes.shape == (3, 40, 48)
    np.testing.assert_allclose(multi.classes.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(multi.foreground, multi.classes[1])
    np.testing.assert_array_equal(multi.boundary, multi.classes[2])
    with make_predictor(_descr(packages, "affinity"), greybox=False, name="affinity") as predictor:
        affinity = predictor.predict(image)
        raw = predictor._run(image)
    assert affinity.scored == "boundary" and affinity.boundary is None
    np.testing.assert_allclose(affinity.foreground, raw.mean(axis=0), atol=1e-6)
    with make_predictor(_descr(packages, "stardist"), greybox=False, name="stardist") as predictor:
        prob = predictor.predict(image)
    assert prob.foreground.shape == (40, 48) and prob.classes is None


def test_rank_records_the_scored_output_and_ranks_3d_and_two_channel_targets(packages, tmp_path):
    from bioimage_cte.run.pipeline import rank
    from bioimage_cte.run.ranking import ranking_json

    rng = np.random.default_rng(6)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for i in range(2):
        # the untrained packages have no preprocessing: intensities in [0, 1] keep their logits small
        tifffile.imwrite(stacks / f"s{i}.tif", rng.random((12, 40, 40), dtype=np.float32))
    run = rank([str(packages[k]) for k in ("3d", "2d", "2ch")], stacks, RankOptions(estimator="cte-input"))
    ranked = {s.name: s for s in run.ranking.scores}
    assert set(ranked) == {"3d", "2d"}
    assert [f.name for f in run.ranking.failures] == ["2ch"]
    assert "model expects 2 input channels but image" in run.ranking.failures[0].reason
    payload = ranking_json(run.ranking, RankOptions(estimator="cte-input"), images=str(stacks), n_images=2)
    outputs = {m["name"]: m["output"] for m in payload["models"]}
    assert outputs["3d"] == {"tensor": "prob", "channel": "foreground", "index": 0, "scored": "foreground",
                             "how": "channel named 'foreground' as foreground", "scale": {"z": 1.0, "y": 1.0, "x": 1.0}}
    json.dumps(payload, allow_nan=False)

    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        np.save(two / f"t{i}.npy", rng.random((2, 40, 40)).astype(np.float32))
    options = RankOptions(estimator="cte-input", axes="cyx", channels=(1, 0))
    run = rank([str(packages[k]) for k in ("2ch", "2d")], two, options)
    assert {s.name for s in run.ranking.scores} == {"2ch", "2d"} and not run.ranking.failures


def test_cli_channels_and_output_channel_reach_the_ranking(packages, tmp_path):
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app

    images = tmp_path / "two"
    images.mkdir()
    for i in range(2):
        np.save(images / f"t{i}.npy", np.random.default_rng(i).random((3, 40, 40)).astype(np.float32))
    out = tmp_path / "ranking.json"
    result = CliRunner().invoke(app, ["rank", str(packages["2ch"]), str(packages["fgbd"]), "--images", str(images),
                                      "--axes", "cyx", "--channels", "2,0", "--output-channel", "boundary",
                                      "--estimator", "cte-input", "--output", str(out)])
    # the untrained fgbd net may call every pixel foreground: then no model has a score (exit 3), JSON still written
    assert result.exit_code in (0, 3), result.output
    payload = json.loads(out.read_text())
    assert payload["settings"]["channels"] == [2, 0] and payload["settings"]["output_channel"] == "boundary"
    by_name = {m["name"]: m["output"] for m in payload["models"]}
    assert by_name["fgbd"]["channel"] == "boundary" and by_name["fgbd"]["how"] == "--output-channel boundary"
    # the 2-channel model has no channel named boundary: a one-line failure naming its outputs, not a crash
    assert [f["name"] for f in payload["failures"]] == ["2ch"]
    assert "--output-channel 'boundary' matches no output" in payload["failures"][0]["reason"]
    bad = CliRunner().invoke(app, ["rank", str(packages["2ch"]), "--images", str(images), "--axes", "cyx",
                                   "--channels", "0,7"])
    assert bad.exit_code != 0 and "--channels asks for 7" in bad.output
