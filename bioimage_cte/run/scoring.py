"""Scoring models on target images: each model runs once clean and once per perturbation.

:func:`score_model` runs one model over every image, feeding every requested estimator from the same clean
prediction. :func:`rank_models` scores models one at a time (images streamed from disk) and records a model that
fails (cannot be loaded, is not a segmentation model, crashes, needs code the user did not allow) as a
:class:`ModelFailure` with its :class:`Stage` and reason instead of stopping.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bioimage_cte.base.errors import BioimageCteError, ModelRunError, UntrustedCodeError
from bioimage_cte.cte.estimators import Estimator
from bioimage_cte.cte.metrics import foreground_dice, instance_f1, mean_average_precision
from bioimage_cte.cte.outcomes import ModelFailure, ModelResult, Stage, failure_of
from bioimage_cte.predict.images import ImageCache, load_target
from bioimage_cte.predict.segmentation import Prediction, instances, on_grid
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.sources import ModelSource, file_sha256

__all__ = ["Kept", "ModelRun", "rank_models", "release_kept", "score_model", "score_model_kept"]


def _true_metrics(clean: Prediction, labels: np.ndarray, out: dict[str, list[float]]) -> None:
    out.setdefault("dice", []).append(foreground_dice(clean.foreground, labels))
    if clean.foreground.ndim == 2 or clean.volumetric:  # a 3D model's objects are labelled in 3D
        pred = instances(clean)
        out.setdefault("f1", []).append(instance_f1(pred, labels))
        out.setdefault("map", []).append(mean_average_precision(pred, labels))


def _stage(e: BaseException) -> Stage:
    return Stage.SKIPPED if isinstance(e, UntrustedCodeError) else Stage.ESTIMATOR


class ModelRun:
    """One model, loaded once, scoring images one at a time for every requested estimator.

    Use as a context manager; :meth:`score` one image after another (in any order: ``index`` is the image's place in
    the run, which names its random draws), then :meth:`result`. :func:`score_model` runs every image in turn; the
    adaptive budget (:func:`bioimage_cte.run.budget.rank_adaptive`) keeps several runs open and interleaves them.

    Grey-box estimators need ``pytorch_state_dict`` weights whose architecture may run (``options.code_policy()``,
    see :mod:`bioimage_cte.zoo.trust`): a model without them still gets its black-box scores, and the grey-box
    estimators
    record why they could not run in ``failures``. An estimator that only *wants* grey-box access (``cte``: its
    dropout family) is scored black-box then, without that family.

    Raises
    ------
    BioimageCteError
        When the model cannot be loaded or predicted at all (the caller records it as failed).
    """

    def __init__(self, source: ModelSource, estimators: Sequence[Estimator], options: RankOptions, *,
                 with_labels: bool = False, images: ImageCache | None = None) -> None:
        from bioimage_cte.predict.factory import make_predictor
        from bioimage_cte.zoo.models import load_model_and_format

        self.start = time.perf_counter()
        self.source, self.options, self.images = source, options, images
        descr, rdf_format = load_model_and_format(source.location, max_entry_bytes=options.max_entry_bytes)
        self.rdf_format = rdf_format.to_json_dict()
        self.failures: dict[str, tuple[Stage, str]] = {}
        needs = any(e.needs_greybox for e in estimators)
        wants = needs or any(getattr(e, "wants_greybox", False) for e in estimators)
        # messages name the package file: a zoo run lists hundreds of them
        # the clean masks also give each model's consensus signal for its predicted Dice (bool masks, one per image)
        cross_model = any(e.cross_model for e in estimators)
        keep_masks = cross_model or options.predict_dice or any(getattr(e, "keeps_masks", False) for e in estimators)
        common = dict(name=source.location, weight_format=options.weight_format, devices=[options.device],
                      code_policy=options.code_policy(), output_channel=options.output_channel)
        if options.inputs is not None:
            common["inputs"] = options.inputs
        self.greybox, self.idle = wants, False
        try:
            self.predictor = make_predictor(descr, greybox=wants, layer=options.layer, **common)
        except BioimageCteError as e:
            if not wants:
                raise
            self.greybox = False
            self.failures.update({est.name: (_stage(e), str(e)) for est in estimators if est.needs_greybox})
            if (not with_labels and not cross_model and needs
                    and all(est.needs_greybox for est in estimators)):
                self.idle = True  # nothing can run: the model is not run at all
                return
            self.predictor = make_predictor(descr, greybox=False, **common)
        self.scored = [e for e in estimators if e.name not in self.failures and not e.cross_model
                       and not e.needs_labels]
        self.labelled = [e for e in estimators if e.needs_labels]
        self.per_image: dict[str, list[float]] = {e.name: [] for e in self.scored + self.labelled
                                                  if not hasattr(e, "family_values")}
        self.true: dict[str, list[float]] = {}
        self.masks: list[np.ndarray] | None = [] if keep_masks else None
        self.foreground: list[float] = []
        self.volumetric = False
        self.layer: str | None = None
        self._loaded = (dict(self.failures), list(self.per_image))

    def restart(self) -> None:
        """Score another set of images (a zoo run's next target) with the model already loaded: what the previous
        images produced is dropped, the clock restarts (the next result's ``seconds`` has no loading in it)."""
        self.start = time.perf_counter()
        if self.idle:
            return
        failures, names = self._loaded
        self.failures, self.per_image = dict(failures), {name: [] for name in names}
        self.true, self.foreground = {}, []
        self.masks = None if self.masks is None else []

    def __enter__(self) -> ModelRun:
        if not self.idle:
            self.predictor.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.idle:
            self.layer = getattr(self.predictor, "layer", None)
            self.predictor.__exit__(*exc)

    def score(self, index: int, path: Path, labels: np.ndarray | None = None) -> None:
        """Predict one image clean and score it with every estimator (``index``: its place in the run)."""
        image = _load(path, self.options, self.predictor, self.source.location, self.images)
        seed = self.options.seed
        with _model_errors(self.source, path):
            clean = self.predictor.predict(image)
            _check_prediction(clean, self.source, path)
            mask = clean.foreground > 0.5  # on the output's own grid: what the estimators score
            self.foreground.append(float(mask.mean()))
            self.volumetric = self.volumetric or bool(clean.volumetric)
            for estimator in self.scored:
                if hasattr(estimator, "family_values"):
                    for k, v in estimator.family_values(self.predictor, image, clean, seed=seed, index=index,
                                                        greybox=self.greybox).items():
                        self.per_image.setdefault(k, []).append(v)
                else:
                    self.per_image[estimator.name].append(
                        estimator.score_image(self.predictor, image, clean, seed=seed, index=index))
        # masks compared across models, and true metrics, are on the image's (labels') grid whatever the output's
        grid = clean.foreground.shape if labels is None else labels.shape
        if self.masks is not None:
            shape = image.shape[image.ndim - clean.foreground.ndim:] if labels is None else grid
            self.masks.append(on_grid(clean, shape).foreground > 0.5)
        if labels is not None:
            truth = on_grid(clean, grid)
            _true_metrics(truth, labels, self.true)
            for estimator in self.labelled:
                self.per_image[estimator.name].append(estimator.score_labelled(truth, labels, index))

    def result(self) -> ModelResult:
        """What the run has produced so far (the adaptive budget asks after every image)."""
        if not hasattr(self, "_sha256"):
            self._sha256 = file_sha256(self.source.location)
        if self.idle:
            return ModelResult(self.source, {}, {}, None, self.failures, None, time.perf_counter() - self.start,
                               self._sha256, rdf_format=self.rdf_format)
        return ModelResult(self.source, self.per_image, self.true, self.masks, self.failures, self.layer,
                           time.perf_counter() - self.start, self._sha256, self.foreground,
                           self.predictor.readout.to_json_dict(), _weights_json(self.predictor),
                           volumetric=self.volumetric, rdf_format=self.rdf_format)


def _weights_json(predictor: Any) -> dict[str, str] | None:
    choice = getattr(predictor, "weights", None)
    return None if choice is None else choice.to_json()


def _load(path: Path, options: RankOptions, predictor: Any, name: str, images: ImageCache | None = None) -> np.ndarray:
    """An image as this model is fed it: its channels selected for the model's input channel count (a multi-input
    model's ``feed``: the channels of its inputs in order)."""
    feed = getattr(predictor, "feed", None)
    return load_target(path, axes=options.axes, channels=options.channels if feed is None else feed,
                       n_channels=predictor.in_channels, model=name, max_pixels=options.max_pixels, cache=images)


def score_model(
    source: ModelSource,
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    options: RankOptions,
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
    images: ImageCache | None = None,
) -> ModelResult:
    """Run one model over the images and score it with every estimator (see :class:`ModelRun`).

    The model is loaded once; each image is read from disk (or from ``images``, decoded once for every model of a
    ranking), predicted clean once, and handed with that prediction to every estimator. When no estimator can run
    and nothing else needs predictions (labels, cross-model estimators), the model is not run at all.

    Raises
    ------
    BioimageCteError
        When the model cannot be loaded or predicted at all (the caller records it as failed).
    """
    run = ModelRun(source, estimators, options, with_labels=labels is not None, images=images)
    if run.idle:
        return run.result()
    with run:
        for i, path in enumerate(image_paths):
            run.score(i, path, None if labels is None else labels[i])
            if on_image is not None:
                on_image()
    return run.result()


class Kept(NamedTuple):
    """What :func:`score_model_kept` returns: the result, and whether the call loaded the model."""

    result: ModelResult
    loaded: bool


#: the models :func:`score_model_kept` keeps loaded, by package location: (key, ModelRun or the error loading
#: raised). By location, not by thread: a Dask worker may score two models at once, and under a time limit each
#: call runs in a thread of its own (:func:`bioimage_cte.predict.deadline.run_with_deadline`)
_KEPT: dict[str, tuple[bytes, ModelRun | BioimageCteError]] = {}
_KEPT_LOCK = threading.Lock()


def score_model_kept(
    source: ModelSource,
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    options: RankOptions,
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
) -> Kept:
    """:func:`score_model`, keeping the model loaded in this process for the next call on the same model.

    A zoo run sends every target of one model to one process (:class:`bioimage_cte.run.isolated.IsolatedWorker`),
    which so loads the model once. Per call the result is what :func:`score_model` gives: the images are scored
    with their indices from 0, and nothing of a previous target carries over (the predictor holds no state between
    images but its recent preprocessed inputs, looked up by the image object). A model whose processing uses
    dataset-wide statistics, which bioimageio.core updates with every image, is loaded again for every call. A
    package that could not be loaded raises the same error on the next call without a second attempt (the same
    bytes fail the same way); other errors leave nothing kept. The calls for one model come one at a time (one
    zoo task per model); :func:`release_kept` lets it go.
    """
    from bioimage_cte.predict.views import uses_dataset_statistics

    location = source.location
    key = pickle.dumps((location, options, [e.name for e in estimators], labels is not None))
    with _KEPT_LOCK:
        entry = _KEPT.get(location)
    kept = entry[1] if entry is not None and entry[0] == key else None
    if isinstance(kept, BioimageCteError):
        raise kept
    loaded = kept is None
    if loaded:
        release_kept(location)
        try:
            kept = ModelRun(source, estimators, options, with_labels=labels is not None)
        except BioimageCteError as e:
            with _KEPT_LOCK:
                _KEPT[location] = (key, e)
            raise
        if not kept.idle:
            kept.predictor.__enter__()
        with _KEPT_LOCK:
            _KEPT[location] = (key, kept)
    else:
        kept.restart()
    try:
        if not kept.idle:
            for i, path in enumerate(image_paths):
                kept.score(i, path, None if labels is None else labels[i])
                if on_image is not None:
                    on_image()
            kept.layer = getattr(kept.predictor, "layer", None)
        result = kept.result()
    except BaseException:
        release_kept(location)  # a model that crashed is not trusted with the next target
        raise
    if not kept.idle and uses_dataset_statistics(kept.predictor.descr):
        release_kept(location)
    return Kept(result, loaded)


def release_kept(location: str | None = None) -> None:
    """Let go of the model :func:`score_model_kept` keeps for package ``location`` (default: of every model); its
    predictor is closed."""
    with _KEPT_LOCK:
        gone = [_KEPT.pop(k) for k in list(_KEPT) if location is None or k == location]
    for _, kept in gone:
        if isinstance(kept, ModelRun) and not kept.idle:
            kept.predictor.__exit__(None, None, None)


@contextlib.contextmanager
def _model_errors(source: ModelSource, path: Path) -> Iterator[None]:
    """Turn a crash inside the model's forward pass into one line naming the package and the image."""
    try:
        yield
    except BioimageCteError:
        raise
    except Exception as e:
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            raise  # not the package's fault, and worth a retry
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise ModelRunError(f"{source.location}: the model crashed on {path} ({type(e).__name__}: {first}); the "
                            "package's network does not run on this input, check it with 'bioimageio test'") from e


def _check_prediction(clean: Prediction, source: ModelSource, path: Path) -> None:
    if not np.isfinite(clean.foreground).all():
        raise ModelRunError(f"{source.location}: the model returned NaN or inf on {path}; "
                            "the model is broken for this input, check its weights and preprocessing")


def rank_models(
    sources: Sequence[ModelSource],
    image_paths: Sequence[Path],
    estimators: Sequence[Estimator],
    options: RankOptions,
    *,
    labels: Sequence[np.ndarray] | None = None,
    on_image: Callable[[], None] | None = None,
    on_model: Callable[[ModelSource], None] | None = None,
    images: ImageCache | None = None,
) -> tuple[list[ModelResult], list[ModelFailure]]:
    """Score every model, one loaded at a time; a model that fails is recorded with its reason and the others go on.

    With ``options.time_limit`` the models run one after another in a child process that is killed when a model
    reaches the limit (:class:`~bioimage_cte.run.isolated.IsolatedWorker`); the model is then recorded as failed
    ("timed out") and the next one starts a new child.

    A model skipped because it needs package code the policy does not allow is recorded with stage
    :attr:`Stage.SKIPPED`. The images are decoded once for all models (``images``, by default a new
    :class:`~bioimage_cte.predict.images.ImageCache`: its first 512 MiB of pixels are kept for the run).
    """
    from bioimage_cte.run.isolated import IsolatedWorker

    images = ImageCache() if images is None else images
    results: list[ModelResult] = []
    failures: list[ModelFailure] = []
    # one kept child for the models one after another: a fresh process per model paid ~1 s of CPU each for what
    # a process sets up on its first model (bioimageio.spec's validators, torch's first calls); a model that hangs
    # is killed with it, and the next model gets a new one
    with IsolatedWorker(seconds=options.time_limit) as worker:
        for source in sources:
            if on_model is not None:
                on_model(source)
            try:
                results.append(worker.run(score_model, source, image_paths, estimators, options, labels=labels,
                                          what=source.location, location=source.location, on_image=on_image,
                                          images=images))
            except Exception as e:  # one broken zoo entry must never stop the run
                failures.append(failure_of(source, e))
    return results, failures
