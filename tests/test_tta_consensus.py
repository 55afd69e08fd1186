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


def _masks(shift: int, n: int = 2) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros((32, 32), dtype=bool)
        m[8 + shift:20 + shift, 8:20] = True
        out.append(m)
    return out


def _result(name: str, tta: list[float], masks) -> ModelResult:
    return ModelResult(ModelSource(name, f"{name}.zip", "zip", f"/zoo/{name}.zip"), {"tta+consensus": tta},
                       masks=masks, foreground=[float(m.mean()) for m in masks] if masks else [0.2, 0.2])


def test_a_consistent_but_wrong_model_does_not_win_once_the_others_disagree_with_it():
    results = [_result("equivariant-wrong", [0.99, 0.99], _masks(10)),
               _result("good-a", [0.95, 0.94], _masks(0)), _result("good-b", [0.93, 0.95], _masks(1)),
               _result("good-c", [0.90, 0.92], _masks(0))]
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


def test_it_is_registered_with_its_settings():
    est = make_estimator("tta+consensus")
    assert isinstance(est, TTAConsensus) and est.settings()["signals"] == ["tta", "consensus"]


@pytest.mark.slow
def test_the_default_on_nuclei_tiny_crowded_ranks_no_near_constant_model_first():
    """Issue #25: tta ranked nuclei-large-sparse (98 % foreground) first here; the default must not."""
    from pathlib import Path

    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank
    from bioimage_cte.run.ranking import near_constant

    root = Path(__file__).resolve().parents[1]
    zoo = root / "resources" / "zoo"
    names = ("nuclei-large-sparse", "nuclei-small-bright", "nuclei-versatile", "weak-nuclei-tiny", "nuclei-dim-blurry")
    images = sorted((root / "resources" / "data" / "nuclei-tiny-crowded" / "images").glob("*.tif"))[:2]
    run = rank([zoo / f"{n}.zip" for n in names], images, RankOptions(tag="nuclei"))
    assert run.ranking.estimator == "tta+consensus"
    by_name = {s.name: s for s in run.ranking.scores}
    assert near_constant(by_name["nuclei-large-sparse"].foreground_fraction)
    top = run.ranking.scores[0]
    assert not near_constant(top.foreground_fraction) and top.name != "nuclei-large-sparse"
    # its predicted Dice says it is poor here (true Dice 0.33 in the transfer matrix)
    assert by_name["nuclei-large-sparse"].predicted.estimate < top.predicted.estimate - 0.2
