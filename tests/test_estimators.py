"""Estimators on real models: reproducibility, registry, and the interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.cli import ESTIMATOR_NAMES
from bioimage_cte.estimators import (
    ESTIMATORS,
    LABEL_FREE,
    ConsensusAgreement,
    CTEDropout,
    CTEInput,
    Estimator,
    make_estimator,
)
from bioimage_cte.images import list_images, load_labels
from bioimage_cte.ranking import build_ranking, rank_models
from bioimage_cte.sources import find_models

ROOT = Path(__file__).resolve().parents[1]


def test_registry_matches_the_cli_and_the_protocol():
    assert set(ESTIMATOR_NAMES) == set(LABEL_FREE)
    assert set(LABEL_FREE) < set(ESTIMATORS)
    for name in ESTIMATORS:
        estimator = make_estimator(name)
        assert isinstance(estimator, Estimator)
        assert estimator.name == name


def test_make_estimator_validates_options():
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("oracle")
    with pytest.raises(ValueError, match="0 <= p < 1"):
        CTEDropout(p=1.5)
    with pytest.raises(ValueError, match="unknown input perturbation"):
        CTEInput(kind="blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consistency"):
        CTEDropout(consistency="dice")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def two_models(package, instance_package):
    return find_models([package, instance_package])


def test_seeds_reproduce_scores_exactly(two_models, dsb_images):
    estimators = [CTEDropout(p=0.3), CTEInput(strength=0.15)]
    first, _ = rank_models(two_models, dsb_images[:2], estimators, seed=3)
    again, _ = rank_models(two_models, dsb_images[:2], estimators, seed=3)
    other, _ = rank_models(two_models, dsb_images[:2], estimators, seed=4)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.per_image == b.per_image
        assert a.per_image["cte-input"] != c.per_image["cte-input"]
        assert all(0.0 <= v <= 1.0 for v in a.per_image["cte-dropout"])


def test_instance_consistency_uses_watershed_for_boundary_models(two_models, dsb_images):
    results, failures = rank_models(two_models, dsb_images[:1], [CTEDropout(consistency="instance")])
    assert not failures
    assert all(0.0 <= r.per_image["cte-dropout"][0] <= 1.0 for r in results)


def test_consensus_and_ranking_order(two_models):
    masks = [[np.eye(4, dtype=bool)], [np.eye(4, dtype=bool)], [np.zeros((4, 4), bool)]]
    scores = ConsensusAgreement().score_models(masks)
    assert scores[0] == [1.0] and scores[2] == [0.0]


def test_evaluation_inputs_are_labelled_images(dsb_images):
    labels = load_labels(list_images(dsb_images[0].parent), dsb_images[0].parent.parent / "labels")
    assert len(labels) == 4 and all(lab.max() > 10 for lab in labels)


def test_models_without_foreground_rank_last_with_a_note():
    from bioimage_cte.ranking import ModelResult
    from bioimage_cte.sources import ModelSource

    def result(name: str, values: list[float]) -> ModelResult:
        return ModelResult(ModelSource(name, f"{name}.zip", "zip", f"{name}.zip"), {"cte-dropout": values})

    ranking = build_ranking([result("empty", [np.nan, np.nan]), result("good", [0.9, np.nan]),
                             result("fair", [0.5, 0.7])], CTEDropout())
    assert [s.name for s in ranking.scores] == ["good", "fair", "empty"]
    good, fair, empty = ranking.scores
    assert (good.score, good.n_valid, good.n_empty) == (0.9, 1, 1)
    assert fair.score == pytest.approx(0.6) and fair.n_empty == 0
    assert np.isnan(empty.score) and empty.rank == 3 and "no foreground" in empty.note
    assert ranking.to_json_dict()["models"][2]["score"] is None


def test_a_model_that_marks_nearly_everything_gets_a_note():
    """nuclei-large-sparse labels almost all of nuclei-tiny-crowded as foreground, and stays consistent doing it."""
    from bioimage_cte.ranking import SATURATED_FOREGROUND

    images = sorted((ROOT / "resources" / "data" / "nuclei-tiny-crowded" / "images").glob("*.tif"))[:2]
    zoo = ROOT / "resources" / "zoo"
    models = find_models([zoo / "nuclei-large-sparse.zip", zoo / "nuclei-small-bright.zip"])
    results, failures = rank_models(models, images, [CTEDropout()])
    assert not failures
    ranking = build_ranking(results, CTEDropout())
    by_name = {s.name: s for s in ranking.scores}
    saturated, fine = by_name["nuclei-large-sparse"], by_name["nuclei-small-bright"]
    assert saturated.foreground_fraction >= SATURATED_FOREGROUND and saturated.score > 0.9
    assert "of the pixels as foreground" in saturated.note
    assert 0.05 < fine.foreground_fraction < 0.5 and fine.note == ""
    models_json = {m["name"]: m for m in ranking.to_json_dict()["models"]}
    assert models_json["nuclei-large-sparse"]["foreground_fraction"] == pytest.approx(saturated.foreground_fraction)
