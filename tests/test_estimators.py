"""Estimators: the registry and the interface, the draws they make (model-free, with a hand-made predictor), and
reproducibility on real models (slow)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.cte.estimators import (
    ConsensusAgreement,
    CTEDropout,
    CTEInput,
    Estimator,
    MCDropoutAgreement,
    Perturbing,
    consistency_of,
)
from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.cte.perturbations import InputPerturbation, perturb_image
from bioimage_cte.cte.registry import ESTIMATORS, LABEL_FREE, make_estimator
from bioimage_cte.cte.seeds import draw_seed, rng
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.images import list_images, load_labels
from bioimage_cte.predict.segmentation import Prediction, instances
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.ranking import build_ranking
from bioimage_cte.run.scoring import rank_models
from bioimage_cte.zoo.sources import ModelSource, find_models

ROOT = Path(__file__).resolve().parents[1]


def test_registry_matches_the_cli_and_the_protocol():
    from bioimage_cte.cli import options as cli

    assert {str(e) for e in cli.Estimator} == set(LABEL_FREE)
    assert set(LABEL_FREE) < set(ESTIMATORS)
    for name in ESTIMATORS:
        estimator = make_estimator(name)
        assert isinstance(estimator, Estimator)
        assert estimator.name == name


def test_make_estimator_validates_options():
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("oracle")
    with pytest.raises(ValueError, match="0 <= p < 1"):
        CTEDropout(strength=1.5)
    with pytest.raises(ValueError, match="unknown input perturbation"):
        CTEInput(kind="blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consistency"):
        CTEDropout(consistency="dice")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CTEDropout(p=0.2)  # type: ignore[call-arg]  # the old name of the rate is gone


def test_perturbing_estimators():
    perturbing = {n for n in ESTIMATORS if isinstance(make_estimator(n), Perturbing)}
    assert perturbing == {"cte-dropout", "cte-input", "cte-dihedral"}


# --- the draws, with a hand-made predictor -------------------------------------------------------------------


class FakePredictor:
    """A predictor without a network: the foreground is the image squashed to (0, 1); under dropout, the mask seed
    decides which half of the pixels are darkened. Every dropout and every input it is given is recorded."""

    def __init__(self) -> None:
        self.dropouts: list[FeatureDropout] = []
        self.inputs: list[np.ndarray] = []
        self._active: FeatureDropout | None = None

    @contextlib.contextmanager
    def perturbed(self, dropout: FeatureDropout):
        self.dropouts.append(dropout)
        self._active = dropout
        try:
            yield
        finally:
            self._active = None

    def predict(self, image: np.ndarray) -> Prediction:
        self.inputs.append(np.array(image))
        fg = 1 / (1 + np.exp(-(image - 0.5) * 8))
        if self._active is not None:
            keep = np.random.default_rng(self._active.seed % 2**32).random(image.shape) >= self._active.p
            fg = np.where(keep, fg, fg * 0.2)
        return Prediction(fg.astype(np.float32))


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    return (((yy - 16) ** 2 + (xx - 16) ** 2) < 64).astype(np.float32)


def test_cte_dropout_draws_one_mask_seed_per_image_and_repeat():
    image, predictor = _image(), FakePredictor()
    estimator = CTEDropout(strength=0.3, repeats=3)
    clean = predictor.predict(image)
    value = estimator.score_image(predictor, image, clean, seed=5, index=2)
    assert 0.0 <= value < 1.0
    assert [d.seed for d in predictor.dropouts] == [draw_seed(5, "feature-dropout", image=2, repeat=r)
                                                    for r in range(3)]
    assert {d.p for d in predictor.dropouts} == {0.3}
    # the report's perturbed prediction is the first pass that was scored
    again = FakePredictor()
    shown = estimator.perturbed_prediction(again, image, seed=5, index=2)
    assert again.dropouts[0].seed == predictor.dropouts[0].seed
    assert value == pytest.approx(np.mean([
        consistency_of(clean, estimator.perturbed_prediction(FakePredictor(), image, seed=5, index=2, repeat=r),
                       "soft") for r in range(3)]))
    np.testing.assert_array_equal(shown.foreground,
                                  estimator.perturbed_prediction(FakePredictor(), image, seed=5, index=2).foreground)
    # a different run seed or image draws other masks
    other = FakePredictor()
    estimator.score_image(other, image, clean, seed=6, index=2)
    estimator.score_image(other, image, clean, seed=5, index=3)
    assert not {d.seed for d in other.dropouts} & {d.seed for d in predictor.dropouts}


def test_mc_dropout_draws_from_its_own_family():
    image, predictor = _image(), FakePredictor()
    estimator = MCDropoutAgreement(strength=0.25)
    value = estimator.score_image(predictor, image, predictor.predict(image), seed=1, index=0)
    assert 0.0 <= value <= 1.0
    assert [d.seed for d in predictor.dropouts] == [draw_seed(1, "mc-dropout", image=0, repeat=r)
                                                    for r in range(estimator.samples)]
    assert {d.p for d in predictor.dropouts} == {0.25}
    cte_seeds = {draw_seed(1, "feature-dropout", image=0, repeat=r) for r in range(estimator.samples)}
    assert not cte_seeds & {d.seed for d in predictor.dropouts}


def test_cte_input_noise_is_the_same_for_every_model_and_reproducible():
    image = _image()
    estimator = CTEInput(strength=0.15, repeats=2)
    a, b = FakePredictor(), FakePredictor()
    clean = a.predict(image)
    b.predict(image)
    first = estimator.score_image(a, image, clean, seed=3, index=1)
    assert first == estimator.score_image(b, image, clean, seed=3, index=1)
    for r, seen in enumerate(a.inputs[1:]):
        expected = perturb_image(image, InputPerturbation("gaussian", 0.15), rng=rng(3, "input-gaussian", image=1,
                                                                                        repeat=r))
        np.testing.assert_array_equal(seen, expected)
    assert not np.array_equal(a.inputs[1], a.inputs[2])  # two repeats, two draws
    c = FakePredictor()
    estimator.score_image(c, image, clean, seed=4, index=1)
    assert not np.array_equal(c.inputs[0], a.inputs[1])


def _touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """Two discs of radius 6 centred 10 px apart (they overlap around column 15) and a boundary between them."""
    yy, xx = np.mgrid[:21, :31]
    foreground = (((yy - 10) ** 2 + (xx - 10) ** 2 <= 36) | ((yy - 10) ** 2 + (xx - 20) ** 2 <= 36))
    boundary = np.zeros(foreground.shape, np.float32)
    boundary[:, 14:17] = 1.0
    return foreground.astype(np.float32), boundary


def test_instance_consistency_uses_watershed_for_boundary_models():
    foreground, boundary = _touching_discs()
    with_boundary = Prediction(foreground, boundary)
    lost_boundary = Prediction(foreground, np.zeros_like(boundary))  # the perturbation wiped the boundary out
    components = Prediction(foreground)
    # the boundary channel splits the touching objects; components alone (or a blank boundary) merge them
    assert instances(with_boundary).max() == 2
    assert instances(components).max() == 1 and instances(lost_boundary).max() == 1

    class Perturbed(FakePredictor):
        def __init__(self, clean: Prediction, perturbed: Prediction) -> None:
            super().__init__()
            self.clean, self.perturbed_out = clean, perturbed

        def predict(self, image):
            return self.perturbed_out if self._active is not None else self.clean

    image = foreground
    estimator = CTEDropout(consistency="instance")
    split_then_merged = estimator.score_image(Perturbed(with_boundary, lost_boundary), image, with_boundary,
                                              seed=0, index=0)
    merged_both = estimator.score_image(Perturbed(components, components), image, components, seed=0, index=0)
    split_both = estimator.score_image(Perturbed(with_boundary, with_boundary), image, with_boundary, seed=0, index=0)
    assert merged_both == 1.0 and split_both == 1.0
    # the same foreground scores lower once the perturbation merges the two instances the boundary had split
    assert 0.0 < split_then_merged < 0.9
    # the soft and hard scores see foreground only: to them nothing changed
    assert CTEDropout(consistency="hard").score_image(Perturbed(with_boundary, lost_boundary), image, with_boundary,
                                                      seed=0, index=0) == 1.0


def test_consensus_and_ranking_order():
    eye, near = np.eye(8, dtype=bool), np.eye(8, dtype=bool)
    near[0, 1] = True  # another network that nearly agrees
    scores = ConsensusAgreement().score_models([[eye], [near], [np.zeros((8, 8), bool)]])
    assert scores[0] == [1.0] and scores[1] == [pytest.approx(16 / 17)] and scores[2] == [0.0]


def test_format_twins_of_one_network_share_one_vote():
    """Three packages of one network (the same masks) against two other networks that nearly agree: counted per
    package the three would be the majority; counted per network the two are."""
    one = np.zeros((8, 8), bool)
    one[:, :4] = True
    other = np.zeros((8, 8), bool)
    other[:, 4:] = True
    other_b = other.copy()
    other_b[0, 4] = False
    scores = ConsensusAgreement().score_models([[one], [one.copy()], [one.copy()], [other], [other_b]])
    assert scores[0] == scores[1] == scores[2] == [0.0] and scores[4] == [1.0] and scores[3][0] > 0.98


def test_evaluation_inputs_are_labelled_images(dsb_images):
    labels = load_labels(list_images(dsb_images[0].parent), dsb_images[0].parent.parent / "labels")
    assert len(labels) == 4 and all(lab.max() > 10 for lab in labels)


def test_models_without_foreground_rank_last_with_a_note():
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


# --- real models -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(package, instance_package):
    return find_models([package, instance_package])


@pytest.mark.slow
def test_seeds_reproduce_scores_exactly(two_models, dsb_images):
    estimators = [CTEDropout(strength=0.3), CTEInput(strength=0.15)]
    first, _ = rank_models(two_models, dsb_images[:2], estimators, RankOptions(seed=3))
    again, _ = rank_models(two_models, dsb_images[:2], estimators, RankOptions(seed=3))
    other, _ = rank_models(two_models, dsb_images[:2], estimators, RankOptions(seed=4))
    for a, b, c in zip(first, again, other, strict=True):
        assert a.per_image == b.per_image
        assert a.per_image["cte-input"] != c.per_image["cte-input"]
        assert all(0.0 <= v <= 1.0 for v in a.per_image["cte-dropout"])


@pytest.mark.slow
def test_a_model_that_marks_nearly_everything_gets_a_note():
    """nuclei-large-sparse labels almost all of nuclei-tiny-crowded as foreground, and stays consistent doing it."""
    from bioimage_cte.run.ranking import SATURATED_FOREGROUND

    images = sorted((ROOT / "resources" / "data" / "nuclei-tiny-crowded" / "images").glob("*.tif"))[:2]
    zoo = ROOT / "resources" / "zoo"
    models = find_models([zoo / "nuclei-large-sparse.zip", zoo / "nuclei-small-bright.zip"])
    results, failures = rank_models(models, images, [CTEDropout()], RankOptions())
    assert not failures
    ranking = build_ranking(results, CTEDropout())
    by_name = {s.name: s for s in ranking.scores}
    saturated, fine = by_name["nuclei-large-sparse"], by_name["nuclei-small-bright"]
    assert saturated.foreground_fraction >= SATURATED_FOREGROUND and saturated.score > 0.9
    assert "of the pixels as foreground" in saturated.note
    assert 0.05 < fine.foreground_fraction < 0.5 and fine.note == ""
    assert ranking.scores[0].name == "nuclei-small-bright"  # issue #25: a near-constant model is never first
    models_json = {m["name"]: m for m in ranking.to_json_dict()["models"]}
    assert models_json["nuclei-large-sparse"]["foreground_fraction"] == pytest.approx(saturated.foreground_fraction)
