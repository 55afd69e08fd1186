"""build_ranking and ranking_json on hand-made ModelResult values (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bioimage_cte.base.version import __version__
from bioimage_cte.cte.consistency import bootstrap_intervals
from bioimage_cte.cte.estimators import ConsensusAgreement, CTEDropout, MeanConfidence, RandomScore
from bioimage_cte.cte.outcomes import FailureKind, ModelFailure, ModelResult, Stage
from bioimage_cte.cte.seeds import rng, seed_sequence
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.ranking import SATURATED_FOREGROUND, ModelScore, build_ranking, ranking_json
from bioimage_cte.zoo.sources import ModelSource


def _source(name: str) -> ModelSource:
    return ModelSource(name, f"{name}.zip", "zip", f"/zoo/{name}.zip")


def _result(name: str, values: list[float] | None, *, estimator: str = "cte-dropout", foreground=(0.2, 0.3),
            **changes) -> ModelResult:
    per_image = {} if values is None else {estimator: list(values)}
    return ModelResult(_source(name), per_image, foreground=list(foreground), sha256=f"sha-{name}", **changes)


def test_models_are_ordered_by_median_score_best_first():
    ranking = build_ranking([_result("low", [0.2, 0.4, 0.3]), _result("high", [0.9, 0.1, 0.8]),
                             _result("mid", [0.5, 0.6, 0.55])], CTEDropout())
    assert [(s.name, s.rank) for s in ranking.scores] == [("high", 1), ("mid", 2), ("low", 3)]
    high = ranking.scores[0]
    assert high.score == 0.8 and high.per_image == (0.9, 0.1, 0.8) and high.sha256 == "sha-high"
    assert (high.n_images, high.n_valid, high.n_empty, high.note) == (3, 3, 0, "")
    assert high.foreground_fraction == pytest.approx(0.25) and high.source == "high.zip"
    assert ranking.estimator == "cte-dropout" and ranking.settings == CTEDropout().settings()
    assert ranking.failures == ()


def test_ties_keep_the_given_order_with_distinct_ranks():
    ranking = build_ranking([_result("b", [0.5, 0.7]), _result("a", [0.6, 0.6]), _result("c", [0.9])],
                            CTEDropout())
    assert [(s.name, s.rank, s.score) for s in ranking.scores] == [("c", 1, 0.9), ("b", 2, 0.6), ("a", 3, 0.6)]
    swapped = build_ranking([_result("a", [0.6, 0.6]), _result("b", [0.5, 0.7])], CTEDropout())
    assert [s.name for s in swapped.scores] == ["a", "b"]


def test_nan_scores_go_last_with_a_note():
    ranking = build_ranking([_result("blank", [math.nan, math.nan, math.nan]), _result("ok", [0.4, math.nan, 0.6]),
                             _result("blank2", [math.nan])], CTEDropout())
    assert [s.name for s in ranking.scores] == ["ok", "blank", "blank2"]
    ok, blank, blank2 = ranking.scores
    assert ok.score == pytest.approx(0.5) and (ok.n_valid, ok.n_empty) == (2, 1) and ok.note == ""
    assert math.isnan(blank.score) and blank.rank == 2
    assert blank.note == "no foreground predicted on any of the 3 images"
    assert blank2.note == "no foreground predicted on any of the 1 images" and blank2.rank == 3
    assert all(math.isnan(v) for v in blank.interval)
    models = ranking.to_json_dict()["models"]
    assert models[1]["score"] is None and models[1]["per_image"] == [None, None, None]
    assert models[1]["interval"] == [None, None]
    json.dumps(ranking.to_json_dict(), allow_nan=False)


def test_a_saturated_model_gets_a_note():
    ranking = build_ranking([_result("all", [0.99, 0.98], foreground=(0.97, 0.93, 0.4)),
                             _result("edge", [0.9, 0.8], foreground=(SATURATED_FOREGROUND,)),
                             _result("fine", [0.7, 0.8], foreground=(0.89, 0.2))], CTEDropout())
    by_name = {s.name: s for s in ranking.scores}
    assert by_name["all"].foreground_fraction == pytest.approx(0.93)
    assert by_name["all"].note == ("marks 93% of the pixels as foreground: its score says little, check its "
                                   "predictions; ranked after the models that are not near-constant")
    assert "of the pixels as foreground" in by_name["edge"].note
    assert by_name["fine"].note == ""
    # issue #25: a near-constant model never wins; among themselves the estimator's order holds
    assert [s.name for s in ranking.scores] == ["fine", "all", "edge"]
    assert [s.rank for s in ranking.scores] == [1, 2, 3]


def test_an_almost_empty_model_is_not_ranked_first():
    ranking = build_ranking([_result("empty", [0.99, 0.98], foreground=(0.004, 0.006)),
                             _result("fine", [0.7, 0.8], foreground=(0.2, 0.3))], CTEDropout())
    assert [s.name for s in ranking.scores] == ["fine", "empty"]
    assert "marks only 0.5% of the pixels" in ranking.scores[1].note
    no_fraction = build_ranking([_result("m", [0.5], foreground=())], CTEDropout()).scores[0]
    assert math.isnan(no_fraction.foreground_fraction) and no_fraction.note == ""
    assert build_ranking([_result("m", [0.5], foreground=())], CTEDropout()).to_json_dict()["models"][0][
        "foreground_fraction"] is None


def test_failures_keep_their_stage_and_reason():
    given = [ModelFailure("broken", "broken.zip", Stage.PREDICT, "not a valid zip", FailureKind.INVALID_PACKAGE),
             ModelFailure("untrusted", "untrusted.zip", Stage.SKIPPED, "needs --trust-code",
                          FailureKind.UNTRUSTED_CODE)]
    results = [
        _result("good", [0.8]),
        _result("no-greybox", None, failures={"cte-dropout": (Stage.ESTIMATOR, "no pytorch_state_dict weights")}),
        _result("other-estimator", [0.5], estimator="cte-input"),
    ]
    ranking = build_ranking(results, CTEDropout(), failures=given)
    assert [s.name for s in ranking.scores] == ["good"]
    assert [(f.name, f.source, f.stage, f.reason) for f in ranking.failures] == [
        ("broken", "broken.zip", Stage.PREDICT, "not a valid zip"),
        ("untrusted", "untrusted.zip", Stage.SKIPPED, "needs --trust-code"),
        ("no-greybox", "no-greybox.zip", Stage.ESTIMATOR, "no pytorch_state_dict weights"),
        ("other-estimator", "other-estimator.zip", Stage.ESTIMATOR, "estimator did not run"),
    ]
    failures = ranking.to_json_dict()["failures"]
    assert [f["stage"] for f in failures] == ["predict", "skipped", "estimator", "estimator"]
    assert failures[0] == {"name": "broken", "source": "broken.zip", "stage": "predict", "reason": "not a valid zip",
                           "kind": "invalid-package"}
    assert [f["kind"] for f in failures] == ["invalid-package", "untrusted-code", "estimator", "estimator"]
    assert {str(s) for s in Stage} == {"predict", "skipped", "estimator", "unfit"}


def test_intervals_resample_each_models_images_from_the_run_seed():
    values = [0.2, 0.5, 0.9, 0.7, math.nan]
    ranking = build_ranking([_result("m", values), _result("n", values)], CTEDropout(), seed=4)
    m, n = ranking.scores
    lo, hi = m.interval
    assert lo <= m.score <= hi and 0.2 <= lo < hi <= 0.9
    expected = bootstrap_intervals([values], seed=seed_sequence(4, "bootstrap", model="m"))[0]
    assert m.interval == (float(expected[0]), float(expected[1]))
    assert build_ranking([_result("m", values)], CTEDropout(), seed=4).scores[0].interval == m.interval
    assert ranking.to_json_dict()["models"][0]["interval"] == [lo, hi]
    # every (seed, model) resamples on its own: a model's interval does not depend on its neighbours
    alone = build_ranking([_result("n", values)], CTEDropout(), seed=4).scores[0]
    assert alone.interval == n.interval


def test_random_estimator_is_reproducible_per_seed_and_model_and_uses_no_evidence():
    results = [_result("a", [0.0, 0.0], estimator="random"), _result("b", [0.0, 0.0], estimator="random")]
    first = build_ranking(results, RandomScore(), seed=3)
    again = build_ranking(list(reversed(results)), RandomScore(), seed=3)
    other = build_ranking(results, RandomScore(), seed=4)
    scores = {s.name: s.score for s in first.scores}
    assert scores == {s.name: s.score for s in again.scores}
    assert scores != {s.name: s.score for s in other.scores}
    assert scores == {name: float(rng(3, "random", model=name).random()) for name in ("a", "b")}
    # the per-image values are not evidence: other values give the same draw, and no interval is resampled
    changed = build_ranking([_result("a", [0.9, 0.1], estimator="random")], RandomScore(), seed=3).scores[0]
    assert changed.score == scores["a"]
    assert all(math.isnan(v) for s in first.scores for v in s.interval)
    assert first.to_json_dict()["models"][0]["interval"] == [None, None]
    assert not any(math.isnan(v) for v in build_ranking([_result("a", [0.5, 0.6])], CTEDropout()).scores[0].interval)


def test_mean_estimators_and_cross_model_estimators():
    confidence = build_ranking([_result("a", [0.9, 0.7], estimator="confidence")], MeanConfidence()).scores[0]
    assert confidence.score == pytest.approx(0.8)
    eye, near, zero = np.eye(8, dtype=bool), np.eye(8, dtype=bool), np.zeros((8, 8), bool)
    near[0, 1] = True
    results = [_result(n, None, masks=m) for n, m in (("x", [eye]), ("y", [near]), ("z", [zero]))]
    ranking = build_ranking(results, ConsensusAgreement())
    assert [(s.name, s.score) for s in ranking.scores] == [("x", 1.0), ("y", pytest.approx(16 / 17)), ("z", 0.0)]
    # one model with masks has nothing to agree with
    lonely = build_ranking([results[0], _result("w", None)], ConsensusAgreement())
    assert lonely.scores == () and [f.name for f in lonely.failures] == ["x", "w"]


def test_ranking_json_records_every_setting():
    options = RankOptions(estimator="cte-dropout", strength=0.3, seed=2, device="cuda", tag="nuclei",
                          trusted_libraries=("mylab",))
    ranking = build_ranking([_result("a", [0.5, 0.6])], options.make_estimator(), seed=options.seed)
    payload = ranking_json(ranking, options, images="/data/t/images", n_images=2)
    assert payload["settings"] == {
        "estimator": "cte-dropout", "strength": 0.3, "consistency": "soft", "repeats": 1, "threshold": 0.5,
        "bioimage_cte_version": __version__, "images": "/data/t/images", "n_images": 2, "seed": 2,
        "task": "semantic", "axes": None, "device": "cuda", "layer": None, "weight_format": None, "tag": "nuclei",
        "trust_code": False, "trusted_libraries": ["mylab"], "channels": None, "output_channel": None, "inputs": None,
        "budget": "all", "max_pixels": 2**30,
        "max_entry_bytes": 2 * 1024**3, "skip_bad_images": False, "time_limit": 3600.0, "views_batched": True,
        "views_batched_reason": "GPU: the views of an image run as one batch where the model's batch axis allows it"}
    assert payload["models"][0]["name"] == "a" and payload["failures"] == []
    on_cpu = ranking_json(ranking, RankOptions(), images="x", n_images=2)["settings"]
    assert on_cpu["views_batched"] is False and "measured 0.71x" in on_cpu["views_batched_reason"]
    json.dumps(payload, allow_nan=False)


def test_options_come_back_from_a_ranking_json():
    from bioimage_cte.run.pipeline import options_from_settings

    options = RankOptions(estimator="cte-input", perturbation="gamma", strength=0.2, repeats=2, seed=5,
                          device="cuda", tag="nuclei", trust_code=True, trusted_libraries=("mylab",))
    ranking = build_ranking([_result("a", [0.5], estimator="cte-input")], options.make_estimator())
    settings = ranking_json(ranking, options, images="x", n_images=1)["settings"]
    restored = options_from_settings(settings)
    assert restored.make_estimator() == options.make_estimator()
    assert restored.score_settings() == options.score_settings()  # the report re-runs with the scored draws
    assert restored.run_settings() == options.run_settings()


def test_model_score_defaults():
    score = ModelScore("m", "m.zip", 0.5, 1, 2, 2, 0, (0.4, 0.6))
    assert score.note == "" and score.sha256 is None
    assert math.isnan(score.foreground_fraction) and all(math.isnan(v) for v in score.interval)
