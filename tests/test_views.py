"""The flipped/rotated views of an image: their geometry, which models share the preprocessing, and that the shared
path gives the rankings of the general path bit for bit on the demo zoo (real packages, real torch)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
from pathlib import Path

import numpy as np
import pytest
from bioimageio.spec.model import v0_5

from bioimage_cte.predict import views
from bioimage_cte.predict.images import ImageCache, list_images, load_target
from bioimage_cte.predict.segmentation import Prediction
from bioimage_cte.predict.tiling import pad_centred
from bioimage_cte.predict.views import (
    dihedral,
    map_back,
    plan_views,
    processing_reason,
    undo_dihedral,
    view_pad,
)
from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DATA = ROOT / "resources" / "data"
Y, X = v0_5.AxisId("y"), v0_5.AxisId("x")


# --- geometry ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(8))
@pytest.mark.parametrize("shape, pad", [((5, 7), ((1, 2), (3, 0))), ((6, 6), ((2, 2), (2, 2))),
                                        ((3, 5, 7), ((0, 1), (1, 2), (3, 3))), ((4, 9), ((4, 3), (0, 0)))])
def test_a_view_of_the_padded_image_is_the_padded_view_with_the_turned_padding(shape, pad, k):
    image = np.random.default_rng(0).random(shape)
    np.testing.assert_array_equal(dihedral(pad_centred(image, pad), k),
                                  pad_centred(dihedral(image, k), view_pad(pad, k)))


@pytest.mark.parametrize("k", range(8))
def test_views_of_a_model_tensor_turn_its_y_and_x_axes(k):
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    nchw = image[None, None]
    nhwc = image[None, :, :, None]
    np.testing.assert_array_equal(dihedral(nchw, k, axes=(2, 3))[0, 0], dihedral(image, k))
    np.testing.assert_array_equal(dihedral(nhwc, k, axes=(1, 2))[0, ..., 0], dihedral(image, k))
    np.testing.assert_array_equal(undo_dihedral(dihedral(image, k), k), image)
    assert len({dihedral(image, j).tobytes() + bytes(dihedral(image, j).shape) for j in range(8)}) == 8


def test_a_view_is_mapped_back_without_copies():
    fg = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    boundary, classes = fg * 0.5, np.stack([1 - fg, fg])
    back = map_back(Prediction(fg, boundary, classes, volumetric=True), 1)
    np.testing.assert_array_equal(back.foreground, undo_dihedral(fg, 1))
    np.testing.assert_array_equal(back.classes, undo_dihedral(classes, 1))
    assert back.foreground.shape == (8, 6) and back.classes.shape == (2, 8, 6) and back.volumetric
    assert all(np.shares_memory(a, b) for a, b in ((back.foreground, fg), (back.boundary, boundary),
                                                   (back.classes, classes)))


# --- which models share the preprocessing --------------------------------------------------------------------------


def _model(pre: list, post: list | None = None, *, batch_size: int | None = None) -> types.SimpleNamespace:
    axes = [types.SimpleNamespace(type="batch", size=batch_size), types.SimpleNamespace(type="channel"),
            types.SimpleNamespace(type="space", id=Y), types.SimpleNamespace(type="space", id=X)]
    return types.SimpleNamespace(inputs=[types.SimpleNamespace(id="raw", preprocessing=pre, axes=axes)],
                                 outputs=[types.SimpleNamespace(id="mask", postprocessing=post or
                                                                [v0_5.SigmoidDescr()])])


def _zmuv(*axes: str) -> v0_5.ZeroMeanUnitVarianceDescr:
    return v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in axes]))


def _range(*axes: str, reference: str | None = None) -> v0_5.ScaleRangeDescr:
    return v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(axes=[v0_5.AxisId(a) for a in axes], min_percentile=1,
                                                             max_percentile=99.8, reference_tensor=reference))


@pytest.mark.parametrize("pre", [
    [_zmuv("y", "x")], [_zmuv("channel", "y", "x")], [_range("y", "x")],
    [v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=2.0, offset=1.0))],
    [v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0))],
    [v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min_percentile=1.0, max_percentile=99.0, axes=[Y, X]))],
    [v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")), _range("y", "x"),
     v0_5.SigmoidDescr()],
])
def test_pointwise_processing_and_per_image_statistics_over_y_and_x_commute_with_the_views(pre):
    assert processing_reason(_model(pre)) is None
    softmax = v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))
    assert processing_reason(_model(pre, [softmax])) is None


@pytest.mark.parametrize("pre, reason", [
    ([_zmuv("batch", "y", "x")], "zero_mean_unit_variance uses dataset-wide statistics"),
    ([_zmuv("x")], "statistics over axes ['x'], which the views move between"),
    ([_range("y", "x", reference="other")], "scale_range uses the statistics of tensor other"),
    ([v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearAlongAxisKwargs(axis=Y, gain=[1.0, 2.0], offset=[0.0, 0.0]))],
     "scale_linear along axis y"),
    ([types.SimpleNamespace(id="stardist_postprocessing", kwargs=None)], "not known to commute"),
])
def test_processing_that_may_not_commute_takes_the_general_path(pre, reason):
    assert reason in processing_reason(_model(pre))
    plan = plan_views(_model(pre), devices=["cpu"], has_adapter=True)
    assert not plan.shared and not plan.batched and reason in plan.reason


def test_postprocessing_reading_the_input_statistics_takes_the_general_path():
    post = [_range("y", "x", reference="raw")]
    assert "statistics of tensor raw" in processing_reason(_model([_zmuv("y", "x")], post))


def test_views_are_batched_on_a_gpu_only_and_only_where_the_batch_axis_allows(monkeypatch):
    model = _model([_zmuv("y", "x")])
    on_cpu = plan_views(model, devices=["cpu"], has_adapter=True)
    assert on_cpu.shared and not on_cpu.batched and "0.71x" in on_cpu.reason
    assert plan_views(model, devices=["cuda:0"], has_adapter=True).batched
    fixed = plan_views(_model([_zmuv("y", "x")], batch_size=1), devices=["cuda:0"], has_adapter=True)
    assert fixed.shared and not fixed.batched and "batch axis is fixed" in fixed.reason
    assert not plan_views(model, devices=["cpu"], has_adapter=False).shared
    monkeypatch.setattr(views, "SHARED_VIEWS", False)
    assert not plan_views(model, devices=["cuda:0"], has_adapter=True).shared


# --- what a ranking reads once -------------------------------------------------------------------------------------


def test_the_image_cache_decodes_each_image_once_within_its_budget(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"im{i}.npy")
        np.save(paths[-1], np.full((4, 5), i, dtype=np.uint16))
    cache = ImageCache(max_bytes=2 * 4 * 5 * 2)  # room for two of the three
    first = [cache.read(p) for p in paths]
    again = [cache.read(p) for p in paths]
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True, False]
    assert cache.nbytes == 80 and not first[0].flags.writeable  # shared: nobody may change it for the others
    fed = load_target(paths[1], cache=cache)
    assert fed.dtype == np.float32 and fed.shape == (4, 5) and float(fed[0, 0]) == 1.0
    assert load_target(paths[0]) is not load_target(paths[0])  # without a cache every call decodes


def test_an_rdf_is_parsed_once_and_every_caller_gets_its_own_copy():
    text = "name: a\ntags: [x, y]\nbase: &b {k: 1}\nother: *b\n"
    first = load_untrusted_yaml(text, where="rdf.yaml")
    first["tags"].append("changed")
    second = load_untrusted_yaml(text.encode(), where="rdf.yaml")
    assert second == {"name": "a", "tags": ["x", "y"], "base": {"k": 1}, "other": {"k": 1}}
    assert second["base"] is second["other"]  # aliases stay shared objects in the copy


# --- real packages -------------------------------------------------------------------------------------------------


def _demo_ranking(shared: bool, monkeypatch) -> dict:
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    monkeypatch.setattr(views, "SHARED_VIEWS", shared)
    # in this process (time_limit 0): the child process a model runs in by default would not see the switch
    run = rank([ZOO], DATA / "dsb2018" / "images", RankOptions(tag="nuclei", time_limit=0))
    return run.to_json_dict()


def _values(payload: dict) -> dict:
    """Every model's score, per-image values and rank, as the ranking JSON holds them."""
    return json.loads(json.dumps({m["name"]: [m["score"], m["per_image"], m["rank"]] for m in payload["models"]}))


@pytest.mark.slow
def test_the_demo_ranking_is_the_same_bit_for_bit_with_the_views_sharing_the_preprocessing(monkeypatch):
    """The demo (``scripts/demo.sh``: the nuclei models on DSB2018, the default estimator) through both paths."""
    shared, general = _demo_ranking(True, monkeypatch), _demo_ranking(False, monkeypatch)
    assert _values(shared) == _values(general)
    assert len(shared["models"]) >= 10 and shared["settings"]["views_batched"] is False


@pytest.mark.slow
def test_the_demo_ranking_has_the_scores_the_code_before_the_speed_work_gave():
    """The demo with the default options (each model in its own process, the views sharing the preprocessing, the
    images decoded once) gives the JSON scores that ``bioimage-cte rank`` of main f9367ef, before this work, wrote
    (``tests/data/demo_ranking_before.json``; written on this machine's CPU and torch: another CPU's kernels may
    round differently, then write it again with the command in the file)."""
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    reference = json.loads((Path(__file__).parent / "data" / "demo_ranking_before.json").read_text())
    # the packages and the estimator (tta, then the default) of that run: packages added since are not in it
    packages = [ZOO / f"{m['name']}.zip" for m in reference["models"]]
    options = RankOptions(tag="nuclei", estimator=reference["settings"]["estimator"])
    run = rank(packages, DATA / "dsb2018" / "images", options)
    assert _values(run.to_json_dict()) == _values(reference)
    assert len(reference["models"]) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("package, target, axes", [
    ("nuclei3d-small", "nuclei3d-medium-noisy", "zyx"),     # a 3D model on a z-stack
    ("nuclei-versatile", "nuclei3d-medium-noisy", "zyx"),   # a 2D model on a stack: slice by slice
    ("cells2ch-unet", "cells2ch-medium", None),             # two input channels
    ("nuclei-3class", "dsb2018", None),                     # softmax classes
    ("nuclei-dim-blurry", "dsb2018", None),                 # percentiles: every view bit for bit
])
def test_shared_views_give_the_general_paths_values_on_other_shapes(package, target, axes):
    from bioimage_cte.cte.estimators import TTAAgreement
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    location = str(ZOO / f"{package}.zip")
    path = list_images(DATA / target / "images")[0]
    with make_predictor(load_model(location), name=location, greybox=False) as predictor:
        image = load_target(path, axes=axes, n_channels=predictor.in_channels)[..., :96, :112]
        image = image[:6] if axes == "zyx" else image  # a few planes of the stack
        assert predictor.views.shared
        shared = predictor.predict_views(image, (1, 2, 4))
        clean = predictor.predict(image)
        value = TTAAgreement().score_image(predictor, image, clean, seed=0, index=0)
        predictor.views = dataclasses.replace(predictor.views, shared=False)
        general = predictor.predict_views(image, (1, 2, 4))
        np.testing.assert_array_equal(predictor.predict(image).foreground, clean.foreground)
        assert TTAAgreement().score_image(predictor, image, clean, seed=0, index=0) == value
    for a, b in zip(shared, general, strict=True):
        assert a.foreground.shape == clean.foreground.shape
        np.testing.assert_array_equal(a.foreground, b.foreground)
        if a.classes is not None:
            np.testing.assert_array_equal(a.classes, b.classes)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bcyx", "byxc"])
def test_a_views_statistics_are_recomputed_as_bioimageio_core_computes_them(layout):
    """Per view, numpy's zero-mean-unit-variance equals bioimageio.core's operators on that view, bit for bit."""
    from bioimageio.core import Sample, Tensor
    from bioimageio.core.common import MemberId
    from bioimageio.core.proc_ops import UpdateStats, ZeroMeanUnitVariance
    from bioimageio.core.stat_calculators import StatsCalculator
    from bioimageio.core.stat_measures import SampleMean, SampleStd

    member = MemberId("raw")
    axes = (v0_5.AxisId("y"), v0_5.AxisId("x"))
    op = ZeroMeanUnitVariance(input=member, output=member, mean=SampleMean(member_id=member, axes=axes),
                              std=SampleStd(member_id=member, axes=axes))
    dims = tuple(layout.replace("b", "B").replace("c", "C"))
    names = {"B": "batch", "C": "channel", "y": "y", "x": "x"}
    images = [load_target(p) for p in list_images(DATA / "nuclei-medium-noisy" / "images")[:2]]
    images += [np.random.default_rng(3).normal(100, 30, (61, 47)).astype(np.float32)]
    for image in images:
        for k in range(8):
            view = np.ascontiguousarray(dihedral(image, k))[None, None] if layout == "bcyx" else \
                np.ascontiguousarray(dihedral(image, k))[None, ..., None]
            sample = Sample(members={member: Tensor(view, dims=tuple(names[d] for d in dims))}, stat={}, id="v")
            UpdateStats(StatsCalculator(op.required_measures))(sample)
            op(sample)
            ours = views.zero_mean_unit_variance(view, (layout.index("y"), layout.index("x")), op.eps)
            np.testing.assert_array_equal(ours, sample.members[member].data.values)


@pytest.mark.slow
def test_views_run_as_one_batch_give_the_views_run_one_by_one():
    """The GPU rule, run on the CPU: stacking the views into one batch changes nothing but rounding."""
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    location = str(ZOO / "nuclei-versatile.zip")
    image = load_target(list_images(DATA / "dsb2018" / "images")[0])[:100, :90]  # not square: views differ in shape
    with make_predictor(load_model(location), name=location, greybox=False) as predictor:
        one_by_one = predictor.predict_views(image, tuple(range(8)))
        predictor.views = dataclasses.replace(predictor.views, batched=True)
        batched = predictor.predict_views(image, tuple(range(8)))
        # an odd size is padded one pixel more on one side: a quarter turn moves that pixel, so every view is
        # predicted as an image of its own
        odd = image[:99, :87]
        views_of_odd = predictor.predict_views(odd, (0, 1, 4))
        each = [map_back(predictor.predict(np.ascontiguousarray(dihedral(odd, k))), k) for k in (0, 1, 4)]
    for k, a, b in zip(itertools.count(), one_by_one, batched, strict=False):
        assert a.foreground.shape == image.shape, k
        np.testing.assert_allclose(a.foreground, b.foreground, atol=1e-5)
    for a, b in zip(views_of_odd, each, strict=True):
        np.testing.assert_array_equal(a.foreground, b.foreground)
