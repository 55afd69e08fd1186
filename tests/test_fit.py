"""Which models fit which targets: decided on the shipped packages and targets before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from conftest import DATA, ZOO

from bioimage_cte.predict.fit import InputLayout, input_layout, shape_reason
from bioimage_cte.run.jobs import plan_pairs, read_target
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.sources import find_models, read_rdf

TARGETS = ["dsb2018", "nuclei3d-medium-noisy", "cells2ch-medium", "cells-brightfield-large", "em-organelles-noisy"]


def _plan(options: RankOptions, *, match_task: bool) -> tuple[set[tuple[str, str]], dict[tuple[str, str], str]]:
    sources = find_models([ZOO])
    targets = [read_target(DATA / name) for name in TARGETS]
    jobs, unfit = plan_pairs(sources, targets, options, match_task=match_task)
    pairs = {(j.source.name, j.target.name) for j in jobs}
    reasons = {(u.model, u.target): u.reason for u in unfit}
    assert not pairs & set(reasons), "a pair is either scored or left out, never both"
    assert len(pairs) + len(reasons) == len(sources) * len(targets), "every pair is accounted for"
    return pairs, reasons


def test_layouts_of_the_shipped_packages():
    layouts = {s.name: input_layout(read_rdf(s)) for s in find_models([ZOO])}
    assert layouts["nuclei3d-small"] == InputLayout("zyx", 1)
    assert layouts["cells2ch-unet"] == InputLayout("yx", 2)
    assert layouts["nuclei-small-bright-keras"] == InputLayout("yx", 1)  # byxc axes
    assert layouts["nuclei-versatile-onnx"] == InputLayout("yx", 1)
    assert input_layout({"inputs": [{"axes": "btyx"}]}) is None  # time series: left to the loader to refuse
    assert input_layout({"name": "no inputs"}) is None


def test_shape_and_task_decide_which_pairs_are_scored():
    pairs, reasons = _plan(RankOptions(), match_task=True)
    # 3D models run on the 3D target only; 2D nuclei models run on it slice by slice
    assert "3D model" in reasons[("nuclei3d-small", "dsb2018")]
    assert {("nuclei3d-small", "nuclei3d-medium-noisy"), ("nuclei-versatile", "nuclei3d-medium-noisy")} <= pairs
    # two-channel models need two-channel images; a one-channel model gets a two-channel image's channels averaged
    assert "expects 2 input channels" in reasons[("cells2ch-unet", "cells-brightfield-large")]
    assert {("cells2ch-unet", "cells2ch-medium"), ("cells-brightfield", "cells2ch-medium")} <= pairs
    # tasks by tag, with the reason naming both
    assert reasons[("em-organelles", "dsb2018")] == "tagged for mitochondria, not for the target task nuclei"
    assert {("nuclei-boundaries", "dsb2018"), ("nuclei-3class", "dsb2018")} <= pairs  # tagged nuclei
    nuclei_2d = {m for m, t in pairs if t == "dsb2018"}
    assert len(nuclei_2d) == 17 and not any(m.startswith(("cells", "em-", "nuclei3d")) for m in nuclei_2d)
    assert {m for m, t in pairs if t == "em-organelles-noisy"} == {"em-clean-large", "em-organelles-dense",
                                                                   "em-organelles", "em-vesicles"}


def test_without_task_matching_only_shapes_decide():
    pairs, reasons = _plan(RankOptions(), match_task=False)
    assert ("em-organelles", "dsb2018") in pairs
    assert all("tagged" not in r for r in reasons.values())
    # the four 3D models on the four 2D targets, the four 2-channel models on the four single-channel targets
    assert len(reasons) == 4 * 4 + 4 * 4


def test_channel_selection_is_checked_as_the_scoring_applies_it(tmp_path: Path):
    image = sorted((DATA / "cells2ch-medium" / "images").iterdir())[0]
    assert shape_reason(InputLayout("yx", 2), image, model="m") is None
    reason = shape_reason(InputLayout("yx", 2), image, model="m", channels=(0,))
    assert reason is not None and reason.startswith("m: model expects 2 input channels") and "--channels 0" in reason
    assert shape_reason(InputLayout("yx", 1), image, model="m", channels=(1,)) is None
    assert "3D model" in (shape_reason(InputLayout("zyx", 1), image, model="m") or "")


def test_mixed_2d_and_3d_candidates_on_stacks_are_warned_about():
    from bioimage_cte.predict.fit import mixed_dimensions_warning

    sources = {s.name: s for s in find_models([ZOO])}
    mixed = [sources["nuclei3d-small"], sources["nuclei-versatile"]]
    stack = sorted((DATA / "nuclei3d-medium-noisy" / "images").iterdir())[0]
    frame = sorted((DATA / "dsb2018" / "images").iterdir())[0]
    assert "mix 3D models and 2D models" in (mixed_dimensions_warning(mixed, stack) or "")
    assert mixed_dimensions_warning(mixed, frame) is None  # 3D models do not fit 2D images: nothing is mixed
    assert mixed_dimensions_warning(mixed[:1], stack) is None and mixed_dimensions_warning(mixed[1:], stack) is None
