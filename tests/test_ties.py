"""Tied per-image values share their rank: a format twin scores exactly as its source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.cte.combined import TIE_TOLERANCE, normalised_ranks, per_image_combined, tied_ranks

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DSB = ROOT / "resources" / "data" / "dsb2018" / "images"


def test_values_within_round_off_share_their_rank():
    # the medians of nuclei-dim-blurry and its torchscript twin under cte's dropout family (measured)
    source, twin = 0.9608708281088777, 0.9608708183103489
    assert tied_ranks([source, 0.5, twin]).tolist() == [2.5, 1.0, 2.5]
    assert normalised_ranks([twin, source, 0.95]).tolist() == [0.75, 0.75, 0.0]
    # a real difference is not a tie
    assert tied_ranks([0.5, 0.5 + 10 * TIE_TOLERANCE]).tolist() == [1.0, 2.0]
    # per image, in every family: the twins' combined values are identical floats
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, size=(3, 6))
    per_family = {f: np.vstack([base[k], base[k] + rng.uniform(-1e-7, 1e-7, 6), rng.uniform(0.5, 1.0, 6)])
                  for k, f in enumerate(("dropout", "dihedral", "noise"))}
    combined = per_image_combined(per_family)
    assert np.array_equal(combined[0], combined[1])


@pytest.mark.slow
def test_a_format_twin_scores_exactly_as_its_source_under_cte():
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    images = sorted(DSB.glob("*.tif"))[:2]
    models = [ZOO / f"{name}.zip" for name in ("nuclei-dim-blurry", "nuclei-dim-blurry-torchscript",
                                               "weak-nuclei-tiny")]
    run = rank(models, images, RankOptions(estimator="cte"))
    by_name = {s.name: s for s in run.ranking.scores}
    source, twin = by_name["nuclei-dim-blurry"], by_name["nuclei-dim-blurry-torchscript"]
    # the families' values differ by float round-off only ...
    for family, value in source.details["families"].items():
        assert twin.details["families"][family] == pytest.approx(value, abs=TIE_TOLERANCE)
    assert source.details["families"] != twin.details["families"]
    # ... so the combination gives both the same per-image values, score and ~top mark
    assert twin.per_image == source.per_image and twin.score == source.score
    assert twin.tied_with_top == source.tied_with_top
    assert by_name["weak-nuclei-tiny"].score < source.score
