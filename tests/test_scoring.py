"""score_model, rank_models and the pipeline entry points with a stand-in for the predictor factory: how the
scoring loop feeds the estimators, streams images, records failures with their Stage, and ranks (no model, no
torch). The same paths on real packages are covered by the slow tests (test_estimators, test_memory, test_cli)."""

from __future__ import annotations

import contextlib
import math
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.base.errors import InvalidModelError, ModelRunError, UntrustedCodeError
from bioimage_cte.cte.estimators import CTEDropout, CTEInput, FewLabelOracle, MeanConfidence
from bioimage_cte.cte.outcomes import Stage
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.segmentation import Prediction
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.ranking import build_ranking
from bioimage_cte.run.scoring import rank_models, score_model
from bioimage_cte.zoo.readout import Readout
from bioimage_cte.zoo.sources import ModelSource, file_sha256

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"


class FakePredictor:
    """A network-free model: the foreground is the image thresholded at ``level`` (softly); dropout darkens it by
    an amount fixed by the mask seed. ``behaviour`` makes it crash or return NaN."""

    def __init__(self, name: str, *, greybox: bool, log: list) -> None:
        self.name, self.greybox, self.log = name, greybox, log
        self.level = {"sharp": 0.5, "dim": 0.8}.get(Path(name).stem.split("-")[0], 0.5)
        self.layer = "bottleneck" if greybox else None
        self._dropout: FeatureDropout | None = None
        self.in_channels = 1
        self.readout = Readout("prob", ("foreground",), 0, how="channel named 'foreground' as foreground")

    def __enter__(self):
        self.log.append(("enter", Path(self.name).stem, self.greybox))
        return self

    def __exit__(self, *exc):
        self.log.append(("exit", Path(self.name).stem, self.greybox))

    @contextlib.contextmanager
    def perturbed(self, dropout: FeatureDropout):
        assert self.greybox, "only a grey-box predictor can perturb features"
        self._dropout = dropout
        try:
            yield
        finally:
            self._dropout = None

    def predict(self, image: np.ndarray) -> Prediction:
        stem = Path(self.name).stem
        if stem.startswith("crash"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore detail")
        if stem.startswith("oom"):
            raise RuntimeError("CUDA out of memory")
        fg = 1 / (1 + np.exp(-(image - self.level) * 20))
        if stem.startswith("nan"):
            fg = fg * np.nan
        if self._dropout is not None:
            fg = fg * (0.6 + 0.4 * (self._dropout.seed % 997) / 997)
        self.log.append(("predict", stem, self._dropout is not None))
        return Prediction(fg.astype(np.float32))


@pytest.fixture()
def predictors(monkeypatch):
    """Replace the predictor factory and the package loader (torch, bioimageio.core) by stand-ins; returns the log.

    The stand-ins live in this process: rankings here use ``time_limit=0`` (no child process per model).
    """
    log: list = []

    def load_model(location: str, *, max_entry_bytes: int = 2 * 1024**3):
        stem = Path(location).stem
        if stem.startswith("broken"):
            raise InvalidModelError(f"{location} is not a valid zip")
        return types.SimpleNamespace(location=location, stem=stem)

    def make_predictor(descr, *, name, greybox, layer=None, weight_format=None, devices=("cpu",), code_policy=None,
                       output_channel=None):
        log.append(("make", descr.stem, greybox))
        if greybox and descr.stem.startswith("untrusted"):
            raise UntrustedCodeError(f"{name}: skipped by grey-box estimators: its architecture is package code")
        if greybox and descr.stem.startswith("torchscript"):
            raise InvalidModelError(f"{name}: grey-box estimators need pytorch_state_dict weights")
        if not greybox and descr.stem.startswith("untrusted-only"):
            raise UntrustedCodeError(f"{name}: skipped: no torchscript or onnx weights")
        return FakePredictor(name, greybox=greybox, log=log)

    monkeypatch.setattr("bioimage_cte.zoo.models.load_model", load_model)
    monkeypatch.setattr("bioimage_cte.predict.factory.make_predictor", make_predictor)
    return log


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        image = np.zeros((32, 32), np.float32)
        image[4 + i:14 + i, 6:20] = 1.0
        image += rng.normal(scale=0.05, size=image.shape).astype(np.float32)
        path = tmp_path / "images" / f"img{i}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, image)
        paths.append(path)
    return paths


def _source(tmp_path: Path, name: str) -> ModelSource:
    path = tmp_path / "zoo" / f"{name}.zip"
    path.parent.mkdir(exist_ok=True)
    # a zip with a minimal model RDF: the pipeline's package checks pass, and the stand-in never opens it
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", f"type: model\nname: {name}\n")
    return ModelSource(name, str(path), "zip", str(path))


def test_one_clean_prediction_per_image_feeds_every_estimator(predictors, images, tmp_path):
    source = _source(tmp_path, "sharp")
    seen = []
    result = score_model(source, images, [CTEDropout(repeats=2), MeanConfidence()], RankOptions(seed=3),
                         on_image=lambda: seen.append(True))
    assert set(result.per_image) == {"cte-dropout", "confidence"}
    assert all(len(v) == 3 for v in result.per_image.values()) and seen == [True] * 3
    clean = [entry for entry in predictors if entry[0] == "predict" and not entry[2]]
    perturbed = [entry for entry in predictors if entry[0] == "predict" and entry[2]]
    assert len(clean) == 3 and len(perturbed) == 3 * 2  # clean once per image, shared by both estimators
    assert [e for e in predictors if e[0] == "make"] == [("make", "sharp", True)]
    assert predictors[-1] == ("exit", "sharp", True)  # the predictor is closed when scoring ends
    assert result.failures == {} and result.layer == "bottleneck" and result.true == {}
    assert result.sha256 == file_sha256(source.location) and result.masks is None
    assert len(result.foreground) == 3 and all(0.1 < f < 0.2 for f in result.foreground)
    # the per-image draws are those the estimator makes on its own (image index i, the run's seed)
    predictor = FakePredictor(source.location, greybox=True, log=[])
    image = np.load(images[1])
    expected = CTEDropout(repeats=2).score_image(predictor, image, predictor.predict(image), seed=3, index=1)
    assert result.per_image["cte-dropout"][1] == expected
    again = score_model(source, images, [CTEDropout(repeats=2), MeanConfidence()], RankOptions(seed=3))
    assert again.per_image == result.per_image


def test_labels_give_true_metrics_and_the_few_label_oracle(predictors, images, tmp_path):
    labels = [(np.load(p) > 0.5).astype(np.int32) for p in images]
    result = score_model(_source(tmp_path, "sharp"), images, [CTEInput(), FewLabelOracle(k=2)], RankOptions(),
                         labels=labels)
    assert set(result.true) == {"dice", "f1", "map"} and all(len(v) == 3 for v in result.true.values())
    assert all(d > 0.95 for d in result.true["dice"]) and result.true["f1"] == [1.0, 1.0, 1.0]
    few = result.per_image["few-label"]
    assert few[:2] == result.true["dice"][:2] and math.isnan(few[2])


def test_a_model_without_greybox_weights_still_gets_its_black_box_scores(predictors, images, tmp_path):
    result = score_model(_source(tmp_path, "torchscript"), images, [CTEDropout(), MeanConfidence()], RankOptions())
    assert set(result.per_image) == {"confidence"} and len(result.per_image["confidence"]) == 3
    stage, reason = result.failures["cte-dropout"]
    assert stage == Stage.ESTIMATOR and "pytorch_state_dict" in reason
    assert [e for e in predictors if e[0] == "make"] == [("make", "torchscript", True), ("make", "torchscript", False)]


def test_a_model_no_estimator_can_run_is_not_run(predictors, images, tmp_path):
    result = score_model(_source(tmp_path, "untrusted"), images, [CTEDropout()], RankOptions())
    assert result.per_image == {} and result.foreground == []
    assert result.failures["cte-dropout"][0] == Stage.SKIPPED and "package code" in result.failures["cte-dropout"][1]
    assert [e[0] for e in predictors] == ["make"]  # no black-box predictor, no prediction
    ranking = build_ranking([result], CTEDropout())
    assert ranking.scores == () and [(f.name, f.stage) for f in ranking.failures] == [("untrusted", Stage.SKIPPED)]


def test_rank_models_records_each_failure_with_its_stage_and_goes_on(predictors, images, tmp_path):
    names = ["sharp", "broken", "crash", "nan", "untrusted-only", "oom", "dim"]
    sources = [_source(tmp_path, n) for n in names]
    started = []
    results, failures = rank_models(sources, images, [CTEInput()], RankOptions(estimator="cte-input", time_limit=0),
                                    on_model=lambda s: started.append(s.name))
    assert started == names
    assert [r.source.name for r in results] == ["sharp", "dim"]
    by_name = {f.name: f for f in failures}
    assert [f.name for f in failures] == ["broken", "crash", "nan", "untrusted-only", "oom"]
    assert by_name["broken"].stage == Stage.PREDICT and "broken.zip is not a valid zip" in by_name["broken"].reason
    crash = by_name["crash"]
    assert crash.stage == Stage.PREDICT and "\n" not in crash.reason
    assert f"the model crashed on {images[0]} (RuntimeError: mat1 and mat2 shapes cannot be multiplied)" in \
        crash.reason
    assert by_name["nan"].stage == Stage.PREDICT and "returned NaN or inf" in by_name["nan"].reason
    assert by_name["untrusted-only"].stage == Stage.SKIPPED
    # out of memory is not the package's fault: it is not dressed up as a crash of the model
    assert by_name["oom"].reason == "RuntimeError: CUDA out of memory"
    ranking = build_ranking(results, CTEInput(), failures=failures)
    assert [s.name for s in ranking.scores] == ["sharp", "dim"]
    assert ranking.scores[0].score > ranking.scores[1].score  # the stand-in at 0.8 wobbles more under noise


def test_model_crash_is_a_model_run_error(predictors, images, tmp_path):
    with pytest.raises(ModelRunError, match="crash.zip: the model crashed on"):
        score_model(_source(tmp_path, "crash"), images, [MeanConfidence()], RankOptions())


def test_rank_end_to_end_through_the_pipeline(predictors, images, tmp_path):
    from bioimage_cte.run.pipeline import Progress, rank

    for name in ("sharp", "dim", "broken"):
        _source(tmp_path, name)
    np.save(images[0].parent / "blank.npy", np.full((32, 32), 2.0, np.float32))
    events: dict[str, list] = {"warning": [], "start": [], "model": [], "image": []}
    progress = Progress(warning=events["warning"].append, start=events["start"].append,
                        model=lambda s: events["model"].append(s.name), image=lambda: events["image"].append(1))
    options = RankOptions(estimator="cte-dropout", seed=1, strength=0.3, time_limit=0)
    run = rank([tmp_path / "zoo"], images[0].parent, options, progress=progress)
    assert [s.name for s in run.ranking.scores] == ["sharp", "dim"]
    assert [(f.name, f.stage) for f in run.ranking.failures] == [("broken", Stage.PREDICT)]
    assert len(events["warning"]) == 1 and "blank.npy is constant" in events["warning"][0]
    assert events["start"] == [3 * 4] and events["model"] == ["broken", "dim", "sharp"]
    assert len(events["image"]) == 2 * 4
    payload = run.to_json_dict()
    assert payload["settings"]["strength"] == 0.3 and payload["settings"]["seed"] == 1
    assert payload["settings"]["n_images"] == 4 and payload["settings"]["images"] == str(images[0].parent)
    assert payload["failures"][0]["stage"] == "predict"
    assert run.warnings == tuple(events["warning"]) and len(run.images) == 4


def test_evaluate_through_the_pipeline(predictors, images, tmp_path):
    from bioimage_cte.run.pipeline import evaluate

    for name in ("sharp", "dim", "sharp2"):
        _source(tmp_path, name)
    labels = tmp_path / "labels"
    labels.mkdir()
    for p in images:
        np.save(labels / p.name, (np.load(p) > 0.5).astype(np.int32))
    run = evaluate([tmp_path / "zoo"], images[0].parent, labels, RankOptions(time_limit=0),
                   estimators=["cte-input", "confidence", "random"], few_label=1)
    evaluation = run.evaluation
    assert set(evaluation.rankings) == {"cte-input", "confidence", "random", "few-label"}
    assert evaluation.metric == "dice" and set(evaluation.true) == {"sharp", "dim", "sharp2"}
    assert set(evaluation.agreement) == {"cte-input", "confidence", "random", "few-label"}
    assert evaluation.agreement["random"].spearman_ci is None  # a draw has no per-image evidence to resample
    assert evaluation.agreement["cte-input"].spearman_ci is not None
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate([tmp_path / "zoo"], images[0].parent, labels, metric="iou")


def test_overlay_predictions_show_the_scored_draw(predictors, images, tmp_path):
    from bioimage_cte.cte.perturbations import dihedral, undo_dihedral
    from bioimage_cte.run.overlays import overlay_predictions

    source = _source(tmp_path, "sharp")
    options = RankOptions(estimator="cte-dropout", seed=4)
    [(image, clean, perturbed, caption)] = overlay_predictions(source.location, images, [2], options)
    assert caption == "with feature dropout"
    np.testing.assert_array_equal(image, np.load(images[2]))
    predictor = FakePredictor(source.location, greybox=True, log=[])
    expected = options.make_estimator("cte-dropout").perturbed_prediction(predictor, image, seed=4, index=2)
    np.testing.assert_array_equal(perturbed.foreground, expected.foreground)
    assert not np.array_equal(perturbed.foreground, clean.foreground)
    [(_, _, none, no_caption)] = overlay_predictions(source.location, images, [0],
                                                     RankOptions(estimator="confidence"))
    assert none is None and no_caption is None
    # the default tta shows its first transform, rot90, mapped back onto the input's grid
    [(image, clean, rotated, caption)] = overlay_predictions(source.location, images, [1], RankOptions())
    assert caption == "rot90, mapped back"
    expected = undo_dihedral(predictor.predict(np.ascontiguousarray(dihedral(image, 1))).foreground, 1)
    np.testing.assert_array_equal(rotated.foreground, expected)
    # cte draws its flip-or-rotation family, the element scoring drew for this image
    from bioimage_cte.cte.estimators import CTEDihedral
    from bioimage_cte.cte.views import DIHEDRAL_NAMES

    [(_, _, _, caption)] = overlay_predictions(source.location, images, [1], RankOptions(estimator="cte", seed=4))
    assert caption == f"{DIHEDRAL_NAMES[CTEDihedral.transform(4, 1)]}, mapped back"
