"""tta+consensus+boundary, the default for nuclei models: the boundary measures on real images, the score on
hand-made results, and the library's ranking against the benchmark's values for the design it was chosen as."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from bioimage_cte.cte.boundary import boundary_measures, image_gradient
from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.cte.registry import make_estimator
from bioimage_cte.cte.tta_consensus_boundary import BOUNDARY_WEIGHTS, MISSING, TTAConsensusBoundary
from bioimage_cte.predict.images import load_labels, load_target
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.ranking import build_ranking
from bioimage_cte.zoo.sources import ModelSource

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT / "resources" / "data" / "dsb2018"
NAME = TTAConsensusBoundary.name


def test_on_real_nuclei_the_true_mask_sits_on_the_edges_better_than_a_wider_or_tighter_one():
    path = sorted((DSB / "images").glob("*.tif"))[0]
    image, truth = load_target(path), load_labels([path], DSB / "labels")[0] > 0
    g = image_gradient(image)
    true_edge, true_peak = boundary_measures(truth, g)
    for changed in (ndi.binary_dilation(truth, iterations=3), ndi.binary_erosion(truth, iterations=3)):
        edge, peak = boundary_measures(changed, g)
        assert true_edge > edge and true_peak > peak
    assert boundary_measures(np.zeros_like(truth), g)[0] == 0.0
    assert np.isnan(boundary_measures(np.ones_like(truth), g)[1])


def _masks(shift: int, n: int = 3) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros((32, 32), dtype=bool)
        m[8 + shift:20 + shift, 8:20] = True
        out.append(m)
    return out


def _result(name: str, tta, edge, peak, masks) -> ModelResult:
    per_image = {NAME: tta, f"{NAME}/edge": edge, f"{NAME}/peak": peak}
    return ModelResult(ModelSource(name, f"{name}.zip", "zip", f"/zoo/{name}.zip"), per_image, masks=masks,
                       foreground=[float(m.mean()) for m in masks])


def test_the_score_is_the_weighted_sum_of_the_medians_and_the_images_keep_their_spread_around_it():
    results = [_result("tight", [0.94, 0.95, 0.93], [0.66, 0.65, 0.67], [-0.10, -0.12, -0.11], _masks(0)),
               _result("loose-a", [0.95, 0.94, 0.96], [0.62, 0.63, 0.60], [-0.26, -0.24, -0.25], _masks(1)),
               _result("loose-b", [0.93, 0.94, 0.95], [0.63, 0.62, 0.64], [-0.25, -0.27, -0.24], _masks(2)),
               _result("no-boundary", [0.99, 0.99, 0.99], [0.0, 0.0, 0.0], [np.nan] * 3, _masks(3))]
    est = make_estimator(NAME)
    weights = dict(BOUNDARY_WEIGHTS)
    assert isinstance(est, TTAConsensusBoundary) and est.settings()["weights"] == weights
    values = est.score_results(results)
    ranking = build_ranking(results, est)
    by_name = {s.name: s.score for s in ranking.scores}
    from bioimage_cte.cte.tta_consensus import consensus_of

    consensus = consensus_of(results, NAME)
    for r, c, v in zip(results, consensus, values, strict=True):
        medians = {"tta": np.median(r.per_image[NAME]), "consensus": np.median(c),
                   "edge": np.median(r.per_image[f"{NAME}/edge"]),
                   "peak": MISSING if r.source.name == "no-boundary" else np.median(r.per_image[f"{NAME}/peak"])}
        expected = sum(w * medians[s] for s, w in weights.items())
        assert np.median(v) == pytest.approx(expected) and by_name[r.source.name] == pytest.approx(expected)
        # the per-image values vary as the signals do: intervals resample them
        assert (np.ptp(v) > 0) == (r.source.name != "no-boundary")
    # the tight model agrees least with the loose majority and still wins on the edges; no boundary ranks last
    assert consensus[0][0] < consensus[1][0]
    assert [s.name for s in ranking.scores][0] == "tight" and ranking.scores[-1].name == "no-boundary"


def test_every_form_that_keeps_tta_under_its_name_is_a_registered_estimator():
    from bioimage_cte.cte.estimators import TTA_FORMS
    from bioimage_cte.cte.registry import ESTIMATORS

    assert NAME in TTA_FORMS and set(TTA_FORMS) <= set(ESTIMATORS)


def test_it_is_the_default_for_nuclei_only():
    assert RankOptions(tag="nuclei").estimator == NAME and RankOptions(tag="nucleus").estimator == NAME
    assert RankOptions().estimator == "tta+consensus" and RankOptions(tag="cells").estimator == "tta+consensus"
    assert RankOptions(tag="nuclei", estimator="tta").estimator == "tta"


@pytest.mark.slow
def test_the_library_ranks_dsb2018_as_the_benchmark_measured_the_design():
    """The 17 candidates of the recipe benchmark on DSB2018: the library's scores are the frozen formula over the
    benchmark's values for that target (benchmarks/results/quality_values_shipped_recipes.json), and the top
    model is the same."""
    from bioimage_cte.run.pipeline import rank

    values = json.loads((ROOT / "benchmarks" / "results" / "quality_values_shipped_recipes.json").read_text())
    target = values["targets"]["dsb2018"]
    names = target["pools"]["task"]
    paths = [next(p for p in (ROOT / "resources" / "zoo" / f"{n}.zip", ROOT / "resources" / "zoo-recipes" / f"{n}.zip")
                  if p.is_file()) for n in names]
    images = sorted((DSB / "images").glob("*.tif"))
    run = rank(paths, images, RankOptions(tag="nuclei", predict_dice=False))
    assert run.ranking.estimator == NAME
    weights = dict(BOUNDARY_WEIGHTS)
    expected = {}
    for n in names:
        row = target["models"][n]
        signals = {"tta": row["tta"], "consensus": target["consensus"]["task"][n], "edge": row["edge"],
                   "peak": row["peak"]}
        expected[n] = sum(w * float(np.nanmedian(signals[s])) for s, w in weights.items())
    scores = {s.name: s.score for s in run.ranking.scores}
    # the benchmark measured edge and peak on probabilities stored as 8 bits: a pixel at 0.5 may flip
    assert max(abs(scores[n] - expected[n]) for n in names) < 0.01
    assert run.ranking.scores[0].name == max(expected, key=expected.get)
