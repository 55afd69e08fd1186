"""tta+consensus on hand-made results: the consensus half sees a model that is consistent and wrong."""

from __future__ import annotations

import numpy as np
import pytest

from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.cte.registry import make_estimator
from bioimage_cte.cte.tta_consensus import TTAConsensus
from bioimage_cte.run.calibrated import model_signals
from bioimage_cte.run.ranking import build_ranking
from bioimage_cte.zoo.sources import ModelSource


def _masks(shift: int, n: int = 2, *, extra: int = 0) -> list[np.ndarray]:
    """A 12 x 12 square ``shift`` rows down, and ``extra`` stray pixels (another network's almost equal masks)."""
    out = []
    for _ in range(n):
        m = np.zeros((32, 32), dtype=bool)
        m[8 + shift:20 + shift, 8:20] = True
        m[0, :extra] = True
        out.append(m)
    return out


def _result(name: str, tta: list[float], masks) -> ModelResult:
    return ModelResult(ModelSource(name, f"{name}.zip", "zip", f"/zoo/{name}.zip"), {"tta+consensus": tta},
                       masks=masks, foreground=[float(m.mean()) for m in masks] if masks else [0.2, 0.2])


def test_a_consistent_but_wrong_model_does_not_win_once_the_others_disagree_with_it():
    results = [_result("equivariant-wrong", [0.99, 0.99], _masks(10)),
               _result("good-a", [0.95, 0.94], _masks(0)), _result("good-b", [0.93, 0.95], _masks(1)),
               _result("good-c", [0.90, 0.92], _masks(0, extra=3))]
    ranking = build_ranking(results, TTAConsensus())
    names = [s.name for s in ranking.scores]
    # first by tta, last by consensus: mean rank 0.5, behind the two best of the models that agree
    assert names[0] != "equivariant-wrong" and names.index("equivariant-wrong") >= 2
    assert ranking.scores[names.index("equivariant-wrong")].score == 0.5
    by_tta = sorted(results, key=lambda r: -np.median(r.per_image["tta+consensus"]))
    assert by_tta[0].source.name == "equivariant-wrong"
    signals = model_signals(results)
    assert signals[0]["tta"] == 0.99 and signals[0]["consensus"] < 0.3 < 0.9 < signals[1]["consensus"]


def test_without_masks_or_with_two_models_it_is_tta_alone():
    results = [_result("a", [0.9, 0.8], None), _result("b", [0.7, 0.95], None), _result("c", [0.5, 0.5], None)]
    est = TTAConsensus()
    assert est.consensus(results) == [None, None, None]
    assert est.score_results(results) == [[0.9, 0.8], [0.7, 0.95], [0.5, 0.5]]  # tta's own values
    two = [_result("a", [0.9], _masks(0, 1)), _result("b", [0.8], _masks(5, 1))]
    assert est.consensus(two) == [None, None]


def test_it_is_registered_with_the_weights_of_the_shipped_calibration():
    from bioimage_cte.cte.calibration import load_calibration

    est = make_estimator("tta+consensus")
    fit = load_calibration().fits[0]
    assert isinstance(est, TTAConsensus) and est.settings()["signals"] == ["tta", "consensus"]
    assert fit.features == ("tta", "consensus") and est.weights == (fit.intercept, *fit.weights)
    assert est.settings()["weights"] == [round(w, 6) for w in est.weights]


def test_with_the_calibration_each_image_is_its_predicted_dice_and_the_score_their_median():
    results = [_result("equivariant-wrong", [0.99, 0.99], _masks(10)),
               _result("good-a", [0.95, 0.94], _masks(0)), _result("good-b", [0.93, 0.95], _masks(1)),
               _result("good-c", [0.90, 0.92], _masks(0, extra=3))]
    est = make_estimator("tta+consensus")
    intercept, w_tta, w_consensus = est.weights
    consensus = est.consensus(results)
    values = est.score_results(results)
    for r, c, v in zip(results, consensus, values, strict=True):
        expected = np.clip(intercept + w_tta * np.array(r.per_image["tta+consensus"]) + w_consensus * np.array(c), 0, 1)
        assert v == pytest.approx(list(expected))
    ranking = build_ranking(results, est)
    by_name = {s.name: s for s in ranking.scores}
    assert ranking.scores[-1].name == "equivariant-wrong"  # its consensus is near 0: expected Dice near 0 too
    assert by_name["good-a"].score == pytest.approx(float(np.median(values[1])))


def test_a_calibration_without_the_two_signals_falls_back_to_the_ranks(tmp_path):
    import json

    from bioimage_cte.cte.calibration import DEFAULT_CALIBRATION
    from bioimage_cte.run.options import RankOptions

    payload = json.loads(DEFAULT_CALIBRATION.read_text())
    payload["fits"] = [f for f in payload["fits"] if f["features"] == ["tta"]]
    path = tmp_path / "tta-only.json"
    path.write_text(json.dumps(payload))
    est = RankOptions(calibration=str(path)).make_estimator()
    assert est.weights is None and "ranks" in est.settings()["combination"]


@pytest.mark.slow
def test_the_default_on_nuclei_tiny_crowded_ranks_no_near_constant_model_first():
    """Issue #25: tta ranked nuclei-large-sparse (98 % foreground) first here; the nuclei default must not."""
    from pathlib import Path

    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank
    from bioimage_cte.run.ranking import near_constant

    root = Path(__file__).resolve().parents[1]
    zoo = root / "resources" / "zoo"
    names = ("nuclei-large-sparse", "nuclei-small-bright", "nuclei-versatile", "weak-nuclei-tiny", "nuclei-dim-blurry")
    images = sorted((root / "resources" / "data" / "nuclei-tiny-crowded" / "images").glob("*.tif"))[:2]
    run = rank([zoo / f"{n}.zip" for n in names], images, RankOptions(tag="nuclei"))
    assert run.ranking.estimator == "tta+consensus+boundary"  # the default for nuclei models
    by_name = {s.name: s for s in run.ranking.scores}
    assert near_constant(by_name["nuclei-large-sparse"].foreground_fraction)
    top = run.ranking.scores[0]
    assert not near_constant(top.foreground_fraction) and top.name != "nuclei-large-sparse"
    # its predicted Dice says it is poor here (true Dice 0.33 in the transfer matrix)
    assert by_name["nuclei-large-sparse"].predicted.estimate < top.predicted.estimate - 0.2
