"""Issue #13's pieces: the dihedral perturbation, the combined ``cte`` score, the automatic strength, the budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.cte.combined import CTECombined, combine, normalised_ranks, per_image_combined
from bioimage_cte.cte.estimators import CTEDihedral
from bioimage_cte.cte.outcomes import ModelResult
from bioimage_cte.cte.perturbations import dihedral
from bioimage_cte.predict.segmentation import Prediction
from bioimage_cte.run.budget import MIN_IMAGES, image_order, lead_is_settled, stop_reason
from bioimage_cte.run.options import RankOptions, parse_budget
from bioimage_cte.run.strength import choose_strength
from bioimage_cte.zoo.sources import ModelSource

# --- dihedral ----------------------------------------------------------------------------------------------------


class RecordingPredictor:
    """No network: the foreground is a fixed function of each pixel, plus a ramp along x that a flip or rotation
    moves (so the perturbed prediction differs from the clean one). Records every input."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def predict(self, image: np.ndarray) -> Prediction:
        self.inputs.append(np.array(image))
        ramp = np.linspace(-1.0, 1.0, image.shape[-1])[None, :]
        return Prediction((1 / (1 + np.exp(-(image - 0.5) * 8 - ramp))).astype(np.float32))


def _disc() -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    return (((yy - 12) ** 2 + (xx - 18) ** 2) < 60).astype(np.float32)


def test_dihedral_draw_is_reproducible_from_its_seed_and_never_the_identity():
    draws = {(s, i): CTEDihedral.transform(s, i) for s in range(6) for i in range(8)}
    assert set(draws.values()) <= set(range(1, 8))
    assert len(set(draws.values())) >= 5  # the draws cover the group, not one element
    assert all(CTEDihedral.transform(s, i) == k for (s, i), k in draws.items())
    image = _disc()
    a, b = RecordingPredictor(), RecordingPredictor()
    first = CTEDihedral().perturbed_prediction(a, image, seed=3, index=2)
    again = CTEDihedral().perturbed_prediction(b, image, seed=3, index=2)
    np.testing.assert_array_equal(first.foreground, again.foreground)
    np.testing.assert_array_equal(a.inputs[0], dihedral(image, CTEDihedral.transform(3, 2)))
    # the prediction comes back in the clean image's frame: an equivariant model (no ramp) would agree exactly
    clean = a.predict(image)
    assert first.foreground.shape == clean.foreground.shape
    assert 0.0 < CTEDihedral(consistency="soft").score_image(RecordingPredictor(), image, clean, seed=3,
                                                             index=2) < 1.0


@pytest.mark.slow
def test_dihedral_on_a_real_package_is_reproducible(package, dsb_images):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.predict.images import load_target
    from bioimage_cte.zoo.models import load_model

    image = load_target(dsb_images[0])[:128, :128]
    with make_predictor(load_model(str(package)), name=str(package), greybox=False) as predictor:
        clean = predictor.predict(image)
        values = [CTEDihedral().score_image(predictor, image, clean, seed=7, index=1) for _ in range(2)]
    assert values[0] == values[1] and 0.0 < values[0] <= 1.0


# --- the combined score ------------------------------------------------------------------------------------------


def _result(name: str, per_image: dict[str, list[float]]) -> ModelResult:
    return ModelResult(ModelSource(name, name, kind="zip", location=f"{name}.zip"), per_image)


def test_combined_score_gives_the_known_order_and_survives_an_uninformative_family():
    rng = np.random.default_rng(0)
    quality = np.array([0.9, 0.7, 0.5, 0.3])  # the known order: model 0 best
    n_images = 6
    per_family = {
        "dropout": quality[:, None] + 0.02 * rng.standard_normal((4, n_images)),
        "dihedral": 0.5 + 0.5 * quality[:, None] + 0.02 * rng.standard_normal((4, n_images)),
        # uninformative: the same noise level for everyone
        "noise": 0.8 + 0.05 * rng.standard_normal((4, n_images)),
    }
    per_image = per_image_combined(per_family)
    assert list(np.argsort(-np.nanmean(per_image, axis=1))) == [0, 1, 2, 3]
    # on per-model scores one dissenting family of three can swap neighbours; two agreeing ones give the order
    medians = {f: np.median(v, axis=1) for f, v in per_family.items() if f != "noise"}
    assert list(np.argsort(-combine(medians))) == [0, 1, 2, 3]
    assert normalised_ranks([0.2, 0.2]).tolist() == [0.5, 0.5]


def test_cte_ranks_hand_made_results_and_records_families_black_box_without_dropout():
    estimator = CTECombined()
    k = estimator.key
    results = [
        _result("good", {k("dropout"): [0.95, 0.9], k("dihedral"): [0.9, 0.92], k("noise"): [0.8, 0.85]}),
        _result("black-box-fair", {k("dihedral"): [0.85, 0.88], k("noise"): [0.7, 0.75]}),
        _result("poor", {k("dropout"): [0.6, 0.5], k("dihedral"): [0.6, 0.55], k("noise"): [0.4, 0.5]}),
    ]
    from bioimage_cte.run.ranking import build_ranking

    ranking = build_ranking(results, estimator)
    assert [s.name for s in ranking.scores] == ["good", "black-box-fair", "poor"]
    payload = ranking.to_json_dict()
    assert set(payload["models"][0]["families"]) == {"dropout", "dihedral", "noise"}
    assert set(payload["models"][1]["families"]) == {"dihedral", "noise"}
    assert payload["models"][0]["families"]["dropout"] == pytest.approx(0.925)
    assert payload["settings"]["families"] == ["dropout", "dihedral", "noise"]


def test_cte_refuses_a_single_strength():
    with pytest.raises(ValueError, match="several families"):
        RankOptions(estimator="cte", strength=0.3)


# --- automatic strength ------------------------------------------------------------------------------------------


def _synthetic_family(strengths, robustness, collapse_at):
    """Consistency of models of given robustness: 1 - s / robustness, clipped; masks vanish at ``collapse_at``."""
    consistency = {s: list(np.clip(1 - s / np.asarray(robustness), 0, 1)) for s in strengths}
    keep = {s: [1.0 if s < collapse_at else 0.2] * len(robustness) for s in strengths}
    return consistency, keep


def test_automatic_strength_picks_the_known_best_strength():
    robustness = [2.0, 1.0, 0.6, 0.4]
    # the spread grows with the strength until the weakest model saturates at 0 (s = 0.4); beyond, it shrinks
    consistency, keep = _synthetic_family((0.05, 0.1, 0.4, 0.8), robustness, collapse_at=10)
    assert choose_strength(consistency, keep) == 0.4
    # the same, but at 0.4 the best models' masks vanish: intolerable, so the best tolerable one
    consistency, keep = _synthetic_family((0.05, 0.1, 0.4, 0.8), robustness, collapse_at=0.3)
    assert choose_strength(consistency, keep) == 0.1
    # nearly the same spread at a stronger perturbation: the smaller strength wins
    assert choose_strength({0.1: [0.9, 0.5], 0.2: [0.85, 0.44]}, {0.1: [1, 1], 0.2: [1, 1]}) == 0.1


# --- adaptive budget ---------------------------------------------------------------------------------------------


def _replay(values: np.ndarray, budget="auto", seed: int = 0) -> tuple[int, str]:
    """The library's stopping rule over per-image values (models x images), images in the run's order."""
    order = image_order(values.shape[1], seed)
    for n in range(1, values.shape[1] + 1):
        seen = values[:, order[:n]]
        settled = lead_is_settled(lambda pos, v=seen: np.median(v[:, list(pos)], axis=1), n, seed=seed)
        reason = stop_reason(parse_budget(budget), n, values.shape[1], settled)
        if reason:
            return n, reason
    raise AssertionError("never stopped")


def test_budget_stops_early_on_a_clear_winner_and_uses_every_image_on_a_tie():
    rng = np.random.default_rng(1)
    clear = np.vstack([0.9 + 0.02 * rng.standard_normal(100), 0.6 + 0.05 * rng.standard_normal(100),
                       0.5 + 0.05 * rng.standard_normal(100)])
    n, reason = _replay(clear)
    assert reason == "settled" and n == MIN_IMAGES
    tie = np.vstack([0.7 + 0.05 * rng.standard_normal(40)] * 2)
    assert _replay(tie) == (40, "all images")
    assert _replay(clear, budget=10) == (10, "budget")
    assert _replay(clear, budget="all") == (100, "all images")
    with pytest.raises(ValueError, match="budget"):
        parse_budget("half")


@pytest.mark.slow
def test_rank_with_budget_auto_stops_well_before_100_images_with_a_clear_winner(tmp_path, zoo_packages):
    import tifffile

    from bioimage_cte.demozoo.synthetic import DOMAINS, render_many
    from bioimage_cte.run.pipeline import rank

    images, _ = render_many(DOMAINS["nuclei-small-bright"], 100, (64, 64), rng=3)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        tifffile.imwrite(folder / f"img_{i:03d}.tif", np.clip(image, 0, 65535).astype(np.uint16))
    zoo = [p for p in zoo_packages if p.stem in ("nuclei-small-bright", "weak-nuclei-undertrained")]
    run = rank([str(p) for p in zoo], folder, RankOptions(estimator="cte-input", budget="auto"))
    payload = run.to_json_dict()
    assert payload["settings"]["stop_reason"] == "settled"
    assert payload["settings"]["images_used"] < 50
    assert all(m["n_images"] == payload["settings"]["images_used"] for m in payload["models"])
    # a tie (the same package twice) is never settled: every image is used
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(zoo[0], twin / "copy-of-model.zip")
    few = sorted(folder.glob("*.tif"))[:8]
    tied = rank([str(zoo[0]), str(twin / "copy-of-model.zip")], few, RankOptions(estimator="cte-input",
                                                                                 budget="auto"))
    assert tied.stop_reason == "all images" and len(tied.images) == 8
    assert Path(tied.images[0]).name in {p.name for p in few}


@pytest.mark.slow
def test_rank_with_automatic_strength_records_the_chosen_strength(zoo_packages, dsb_images):
    from bioimage_cte.run.pipeline import rank
    from bioimage_cte.run.strength import STRENGTH_GRIDS

    zoo = [str(p) for p in zoo_packages if p.stem in ("nuclei-small-bright", "weak-nuclei-undertrained")]
    run = rank(zoo, dsb_images[:3], RankOptions(estimator="cte", strength="auto"))
    settings = run.to_json_dict()["settings"]
    for family in ("dropout", "noise"):
        assert settings["automatic_strength"][family]["chosen"] in STRENGTH_GRIDS[family]
        assert settings[family] == settings["automatic_strength"][family]["chosen"]
    # an explicit strength wins over the choice
    fixed = rank(zoo, dsb_images[:3], RankOptions(estimator="cte-input", strength=0.07))
    assert fixed.to_json_dict()["settings"]["strength"] == 0.07
    assert "automatic_strength" not in fixed.to_json_dict()["settings"]
    with pytest.raises(ValueError, match="no automatic strength"):
        RankOptions(estimator="tta", strength="auto")
