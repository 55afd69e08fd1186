"""k-shot fine-tuning of zoo models on a few labelled target images (issue #7).

Does the zero-shot ranking predict which model is best to *fine-tune*? For every model with
``pytorch_state_dict`` weights the package's torch network is loaded (:mod:`bioimage_cte.studies.networks`),
fine-tuned on k labelled target images with
the loop the demo zoo was trained with (:func:`bioimage_cte.demozoo.training.fit`: Adam, cosine schedule, Dice + BCE,
random patches with flips and rotations), and evaluated on a fixed held-out test split every ``eval_every``
steps. The same architecture trained from a seeded random initialisation with the same budget is the
reference. Every model sees the same patches in the same order (the patch RNG depends on the seed and k
only), so differences between models come from their initial weights.

The package's own preprocessing (``zero_mean_unit_variance`` or ``scale_range``, from its rdf.yaml) is
applied as bioimageio.core applies it (:func:`bioimage_cte.studies.networks.prepare_input`). The zero-shot scores
to compare with come from :func:`zero_shot_cte`, which ranks with :mod:`bioimage_cte.run.scoring` as ``rank`` does.

This module imports torch and bioimageio.core when its functions run; import it lazily from the CLI.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError, InvalidModelError
from bioimage_cte.demozoo.training import fit, targets_from_labels
from bioimage_cte.studies.networks import (
    PackagedNetwork,
    load_packaged_network,
    normalize_input,
    predict_foreground,
    prepare_input,
    scratch_network,
    test_dice,
)
from bioimage_cte.zoo.trust import CodePolicy

if TYPE_CHECKING:
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.zoo.sources import ModelSource

# the network helpers stay importable from here, where the fine-tuning study's callers found them
__all__ = ["FinetuneBenchmark", "FinetuneConfig", "FinetuneRun", "KShotSplit", "KSummary", "PackagedNetwork",
           "check_exportable", "convergence_step", "export_finetuned", "finetune", "kshot_split",
           "load_packaged_network", "predict_foreground", "prepare_input", "run_finetune_benchmark", "scratch_network",
           "summarize_runs", "test_dice", "zero_shot_cte", "zoo_similarity"]

KValue = int | Literal["all"]


@dataclass(frozen=True)
class FinetuneConfig:
    """The budget and schedule shared by every model of a benchmark.

    Parameters
    ----------
    steps : int
        Optimiser steps, the same for every model and every k.
    batch_size, patch : int
        Patches per step and their side (rounded down to a multiple of the network's ``2**depth``).
    learning_rate : float
        Initial Adam learning rate (cosine-annealed to 0 over ``steps``), for fine-tuning and from scratch.
    augment : bool
        Intensity augmentation of each patch (as the zoo models were trained with).
    eval_every : int
        Evaluate the test Dice every this many steps (and at 0 and ``steps``): the convergence curve.
    seed : int
        Seeds the patches, augmentations and the from-scratch initialisation.
    """

    steps: int = 200
    batch_size: int = 4
    patch: int = 96
    learning_rate: float = 1e-3
    augment: bool = True
    eval_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patch < 8:
            raise ValueError(f"invalid fine-tuning budget {self}: steps, batch_size and eval_every must be >= 1 "
                             "and patch >= 8")


@dataclass(frozen=True)
class KShotSplit:
    """Image indices: a fixed test split and, per k, the labelled training images (nested: 1 ⊂ 5 ⊂ all)."""

    test: tuple[int, ...]
    train: dict[str, tuple[int, ...]]
    skipped: dict[str, str]


@dataclass(frozen=True)
class FinetuneRun:
    """One model fine-tuned (or trained from scratch) on k labelled images.

    Attributes
    ----------
    model : str
        Model name (or ``scratch: <architecture>`` for the reference).
    init : {"pretrained", "scratch"}
    k : str
        Number of labelled images, or ``"all"`` (every image outside the test split).
    train : tuple of int
        Indices of the labelled images used.
    curve : tuple of (int, float)
        (step, mean test Dice) from step 0 (before training) to the last step.
    zero_shot_dice, final_dice : float
        Test Dice before and after training.
    steps_to_95 : int
        First evaluated step whose Dice reaches 95% of the final Dice (0 if the start already does).
    seconds : float
        Wall time of training and evaluation.
    """

    model: str
    init: str
    k: str
    train: tuple[int, ...]
    curve: tuple[tuple[int, float], ...]
    zero_shot_dice: float
    final_dice: float
    steps_to_95: int
    seconds: float

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = list(self.train)
        d["curve"] = [list(p) for p in self.curve]
        return d


def kshot_split(n_images: int, *, ks: Sequence[KValue], n_test: int, seed: int) -> KShotSplit:
    """Seeded split: ``n_test`` test images, and nested training sets of k images from the rest.

    A k larger than the number of images left for training is skipped with the reason, and so is a k equal
    to it when ``"all"`` is also asked for (the same run twice).

    Examples
    --------
    >>> s = kshot_split(8, ks=[1, 5, "all"], n_test=2, seed=0)
    >>> len(s.test), {k: len(v) for k, v in s.train.items()}
    (2, {'1': 1, '5': 5, 'all': 6})
    >>> kshot_split(4, ks=[1, 5, "all"], n_test=2, seed=0).skipped
    {'5': 'k=5 needs more than 2 training images (4 images, 2 for testing)'}
    """
    if not 1 <= n_test < n_images:
        raise InvalidImageError(f"{n_images} labelled images cannot be split into {n_test} test images and at least "
                                "one training image; pass more images or a smaller --n-test")
    order = np.random.default_rng(seed).permutation(n_images)
    test, pool = tuple(sorted(int(i) for i in order[:n_test])), [int(i) for i in order[n_test:]]
    train: dict[str, tuple[int, ...]] = {}
    skipped: dict[str, str] = {}
    for k in ks:
        if k == "all":
            train["all"] = tuple(sorted(pool))
        elif not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r}: use a positive number of images or 'all'")
        elif k > len(pool) or (k == len(pool) and "all" in ks):
            skipped[str(k)] = (f"k={k} needs more than {len(pool)} training images ({n_images} images, {n_test} for "
                               "testing)")
        else:
            train[str(k)] = tuple(sorted(pool[:k]))
    return KShotSplit(test, train, skipped)


def convergence_step(curve: Sequence[tuple[int, float]], *, fraction: float = 0.95) -> int:
    """First step of a (step, Dice) curve whose Dice reaches ``fraction`` of the final Dice.

    Examples
    --------
    >>> convergence_step([(0, 0.1), (10, 0.5), (20, 0.86), (30, 0.9)])
    20
    """
    final = curve[-1][1]
    return next(step for step, d in curve if d >= fraction * final)


_Test = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]  # test images and labels


def finetune(
    model: PackagedNetwork,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    train: Sequence[int],
    test: Sequence[int],
    *,
    config: FinetuneConfig,
    k: str,
    init: Literal["pretrained", "scratch"] = "pretrained",
) -> tuple[FinetuneRun, Any]:
    """Fine-tune a copy of ``model.net`` on the ``train`` images and follow its Dice on the ``test`` images.

    Parameters
    ----------
    model : PackagedNetwork
        From :func:`load_packaged_network` (or :func:`scratch_network`); its network is not changed.
    images, labels : sequence of numpy.ndarray
        Raw (y, x) target images and their instance labels (0 = background), all at least ``config.patch``
        on each side.
    train, test : sequence of int
        Indices of the labelled training images and of the held-out test images.
    config : FinetuneConfig
        Budget, schedule and seed.
    k : str
        Label of this training set in the results (``"1"``, ``"5"``, ``"all"``); seeds the patch RNG with the
        seed, so every model gets the same patches for the same k.
    init : {"pretrained", "scratch"}
        Recorded in the result (the caller passes a :func:`scratch_network` for "scratch").

    Returns
    -------
    (FinetuneRun, torch.nn.Module)
        The result and the trained network (eval mode).
    """
    patch = config.patch // model.step * model.step
    small = [i for i in train if min(images[i].shape) < patch]
    if small or patch < model.min_size:
        raise InvalidImageError(f"training images {small} are smaller than the {patch}-pixel patches (or the patch "
                                f"is below the model's minimum input {model.min_size}); pass a --patch that fits")
    start = time.perf_counter()
    net = copy.deepcopy(model.net)
    test_images = [images[i] for i in test]
    test_labels = [labels[i] for i in test]
    curve = [(0, test_dice(model, test_images, test_labels, net=net))]

    def evaluate(step: int, current: Any) -> None:
        if step % config.eval_every == 0 or step == config.steps:
            curve.append((step, test_dice(model, test_images, test_labels, net=current)))

    pool_x = _stack_crops([normalize_input(model, images[i]) for i in train])
    pool_y = _stack_crops([targets_from_labels(labels[i], outputs=model.outputs) for i in train])
    rng = np.random.default_rng([config.seed, _k_code(k)])
    fit(net, pool_x, pool_y, steps=config.steps, batch_size=config.batch_size, patch=patch,
        learning_rate=config.learning_rate, augment=config.augment, rng=rng, on_step=evaluate)
    run = FinetuneRun(model=model.name, init=init, k=k, train=tuple(int(i) for i in train), curve=tuple(curve),
                      zero_shot_dice=curve[0][1], final_dice=curve[-1][1], steps_to_95=convergence_step(curve),
                      seconds=time.perf_counter() - start)
    return run, net


def _k_code(k: str) -> int:
    return 0 if k == "all" else int(k)


def _stack_crops(arrays: Sequence[np.ndarray]) -> np.ndarray:
    # fit() samples from one array: images of different sizes are cropped to the smallest common (y, x).
    h = min(a.shape[-2] for a in arrays)
    w = min(a.shape[-1] for a in arrays)
    return np.ascontiguousarray(np.stack([a[..., :h, :w] for a in arrays]))


def check_exportable(model: PackagedNetwork) -> None:
    """Raise :class:`InvalidModelError` naming the package unless :func:`export_finetuned` can re-package it (the
    demo zoo's UNet2d, with the normalisation ``build_package`` writes): checked before a fine-tuning run starts."""
    kwargs = model.architecture["kwargs"]
    if model.architecture["callable"] != "UNet2d" or not {"features", "depth"} <= set(kwargs):
        raise InvalidModelError(f"{model.source}: architecture {model.architecture['callable']} cannot be exported; "
                                "only the demo zoo's UNet2d can be re-packaged")
    if model.preprocessing == "scale_range" and model.percentiles != (1.0, 99.8):
        raise InvalidModelError(f"{model.source}: scale_range percentiles {model.percentiles} cannot be re-packaged "
                                "(build_package writes 1-99.8)")


def export_finetuned(
    model: PackagedNetwork,
    net: Any,
    test_image: np.ndarray,
    output_path: Path,
    *,
    run: FinetuneRun,
) -> Path:
    """Write a fine-tuned network as a bioimageio package (spec 0.5) with the original's preprocessing.

    Only networks of the demo zoo's ``UNet2d`` architecture (``features``, ``depth`` kwargs) can be exported,
    since :func:`bioimage_cte.demozoo.packaging.build_package` ships that architecture file.
    """
    from bioimage_cte.demozoo.packaging import PackageInfo, build_package

    check_exportable(model)
    kwargs = model.architecture["kwargs"]
    side = model.min_size + (min(test_image.shape) - model.min_size) // model.step * model.step
    crop = test_image[:side, :side]
    info = PackageInfo(
        name=f"{model.name}-finetuned-k{run.k}",
        description=f"{model.name} fine-tuned on {len(run.train)} labelled target images for {run.curve[-1][0]} "
                    f"steps (test Dice {run.zero_shot_dice:.3f} -> {run.final_dice:.3f}).",
        tags=tuple(dict.fromkeys((*model.tags, "finetuned"))),
        config={"finetune": {"parent": model.source, **run.to_json_dict()}})
    return build_package(net.eval(), crop, Path(output_path), info=info, preprocessing=model.preprocessing,
                         outputs=model.outputs, features=int(kwargs["features"]), depth=int(kwargs["depth"]))


@dataclass(frozen=True)
class KSummary:
    """How the models compare after fine-tuning on k images.

    Attributes
    ----------
    k : str
    n_models : int
        Pre-trained models fine-tuned (the scratch reference is not counted).
    best, worst, spread, std : float
        Best and worst fine-tuned test Dice, their difference, and the standard deviation over models.
    best_model : str
    scratch_dice : float or None
        Test Dice of the best from-scratch reference (one per architecture) with the same budget; ``None`` for
        k = 0.
    spearman, spearman_p : float or None
        Spearman rho (and permutation p-value) between the zero-shot scores (e.g. CTE) and the fine-tuned Dice;
        ``None`` without zero-shot scores or with fewer than 3 models.
    top1_hit : bool or None
        Whether the zero-shot pick is also the best after fine-tuning.
    regret : float or None
        Best fine-tuned Dice minus the fine-tuned Dice of the zero-shot pick.
    mean_steps_to_95 : float
        Mean convergence step of the pre-trained models.
    """

    k: str
    n_models: int
    best: float
    worst: float
    spread: float
    std: float
    best_model: str
    scratch_dice: float | None
    spearman: float | None
    spearman_p: float | None
    top1_hit: bool | None
    regret: float | None
    mean_steps_to_95: float

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_runs(runs: Sequence[FinetuneRun], *, zero_shot: dict[str, float] | None = None,
                   seed: int = 0) -> list[KSummary]:
    """Per k (``"0"`` = zero-shot, before any training): spread of the models and agreement with ``zero_shot``.

    ``zero_shot`` maps model names to a label-free score (higher = better), e.g. their CTE scores.
    """
    from bioimage_cte.run.evaluation import rank_agreement

    pretrained = [r for r in runs if r.init == "pretrained"]
    ks = list(dict.fromkeys(r.k for r in pretrained))
    first_k = {r.model: r for r in pretrained if r.k == ks[0]} if ks else {}
    table: list[tuple[str, dict[str, FinetuneRun | float]]] = [("0", {m: r.zero_shot_dice for m, r in first_k.items()})]
    table += [(k, {r.model: r for r in pretrained if r.k == k}) for k in ks]
    out = []
    for k, by_model in table:
        names = list(by_model)
        dice = np.array([v if isinstance(v, float) else v.final_dice for v in by_model.values()])
        if not len(dice):
            continue
        scratch = [r.final_dice for r in runs if r.init == "scratch" and r.k == k]
        agreement = None
        if zero_shot is not None and len(names) >= 3 and all(n in zero_shot for n in names):
            agreement = rank_agreement([zero_shot[n] for n in names], dice, rng=seed)
        steps = [v.steps_to_95 for v in by_model.values() if isinstance(v, FinetuneRun)]
        out.append(KSummary(
            k=k, n_models=len(names), best=float(dice.max()), worst=float(dice.min()),
            spread=float(dice.max() - dice.min()), std=float(dice.std()), best_model=names[int(dice.argmax())],
            scratch_dice=float(max(scratch)) if scratch else None,
            spearman=None if agreement is None else _finite(agreement.spearman),
            spearman_p=None if agreement is None else _finite(agreement.spearman_p),
            top1_hit=None if agreement is None else bool(agreement.top1_hit),
            regret=None if agreement is None else float(agreement.regret),
            mean_steps_to_95=float(np.mean(steps)) if steps else 0.0))
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class FinetuneBenchmark:
    """Everything one benchmark on one target measured (see :func:`run_finetune_benchmark`)."""

    runs: tuple[FinetuneRun, ...]
    split: KShotSplit
    summary: tuple[KSummary, ...]
    zoo_cka: dict[str, Any]
    layer_cka: dict[str, dict[str, dict[str, float]]]
    failures: dict[str, str]
    exported: tuple[str, ...]
    config: FinetuneConfig
    zero_shot: dict[str, float] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config),
                "split": {"test": list(self.split.test), "train": {k: list(v) for k, v in self.split.train.items()},
                          "skipped": self.split.skipped},
                "zero_shot": self.zero_shot,
                "summary": [s.to_json_dict() for s in self.summary],
                "runs": [r.to_json_dict() for r in self.runs],
                "zoo_cka": self.zoo_cka, "layer_cka": self.layer_cka,
                "failures": self.failures, "exported": list(self.exported)}


def zoo_similarity(models: Sequence[PackagedNetwork], images: Sequence[np.ndarray], *, grid: tuple[int, int] = (16, 16),
                   n_samples: int | None = 4096, seed: int = 0) -> dict[str, Any]:
    """Linear CKA between the models' bottleneck features on the same images: the zoo similarity map.

    Every bottleneck map is average-pooled to ``grid`` per image so models of different depth compare the same
    image regions. Returns ``{"models": [...], "layers": [...], "cka": [[...]]}``.
    """
    from bioimage_cte.predict.layers import find_perturbation_layer
    from bioimage_cte.studies.cka import cka_matrix, feature_maps

    feats, layers = [], []
    for m in models:
        layer = find_perturbation_layer(m.net)
        layers.append(layer)
        feats.append(feature_maps(m.net, images, [layer], grid=grid, n_samples=n_samples, rng=seed,
                                  prepare=lambda im, m=m: prepare_input(m, im))[layer])
    return {"models": [m.name for m in models], "layers": layers, "cka": cka_matrix(feats).round(6).tolist()}


def run_finetune_benchmark(
    sources: Sequence[tuple[str, str]],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    ks: Sequence[KValue] = (1, 5, "all"),
    n_test: int = 2,
    config: FinetuneConfig = FinetuneConfig(),
    scratch: bool = True,
    zero_shot: dict[str, float] | None = None,
    export_dir: Path | None = None,
    cka_samples: int | None = 4096,
    code_policy: CodePolicy | None = None,
    on_run: Callable[[str], None] | None = None,
) -> FinetuneBenchmark:
    """Fine-tune every model on k labelled images for each k, with a from-scratch reference per architecture.

    Parameters
    ----------
    sources : sequence of (name, location)
        Model packages; those that cannot be fine-tuned are listed in ``failures`` and the rest still run.
    images, labels : sequence of numpy.ndarray
        Raw (y, x) target images and their instance labels.
    ks : sequence of int or "all"
        Labelled-set sizes; ``"all"`` uses every image outside the test split.
    n_test : int
        Held-out test images (seeded choice), the same for every model and k.
    config : FinetuneConfig
        Shared budget and seed.
    scratch : bool
        Also train each distinct architecture from a seeded random initialisation.
    zero_shot : dict, optional
        Label-free score per model name (e.g. CTE) to correlate with the fine-tuned Dice.
    export_dir : Path, optional
        Write each fine-tuned pre-trained model as a bioimageio package here.
    cka_samples : int or None
        Positions sampled per layer for CKA.
    code_policy : CodePolicy, optional
        Which package code may run (default: trusted installed libraries only).
    on_run : callable, optional
        Called with a description after each training run (progress).
    """
    split = kshot_split(len(images), ks=ks, n_test=n_test, seed=config.seed)
    test_images = [images[i] for i in split.test]
    loaded: list[PackagedNetwork] = []
    failures: dict[str, str] = {}
    for name, location in sources:
        try:
            loaded.append(load_packaged_network(location, name=name, code_policy=code_policy))
        except BioimageCteError as e:
            failures[name] = str(e)
    runs: list[FinetuneRun] = []
    layer_cka: dict[str, dict[str, dict[str, float]]] = {}
    exported: list[str] = []
    references = {m.architecture_key: m for m in loaded} if scratch else {}
    for model, init in [(m, "pretrained") for m in loaded] + [(m, "scratch") for m in references.values()]:
        net0 = scratch_network(model, seed=config.seed) if init == "scratch" else model
        for k, train in split.train.items():
            run, net = finetune(net0, images, labels, train, split.test, config=config, k=k, init=init)
            runs.append(run)
            if init == "pretrained":
                from bioimage_cte.studies.cka import layerwise_cka

                layer_cka.setdefault(model.name, {})[k] = layerwise_cka(
                    model.net, net, test_images, n_samples=cka_samples, rng=config.seed,
                    prepare=lambda im, m=model: prepare_input(m, im))
                if export_dir is not None:
                    path = Path(export_dir) / f"{model.name}-finetuned-k{k}.zip"
                    exported.append(str(export_finetuned(model, net, test_images[0], path, run=run)))
            if on_run is not None:
                on_run(f"{run.model} k={k}: Dice {run.zero_shot_dice:.3f} -> {run.final_dice:.3f}")
    zoo = zoo_similarity(loaded, images, n_samples=cka_samples, seed=config.seed) if len(loaded) > 1 else {}
    summary = summarize_runs(runs, zero_shot=zero_shot, seed=config.seed)
    return FinetuneBenchmark(tuple(runs), split, tuple(summary), zoo, layer_cka, failures, tuple(exported), config,
                             zero_shot)


def zero_shot_cte(sources: Sequence[ModelSource], image_paths: Sequence[Path], options: RankOptions, *,
                  on_image: Callable[[], None] | None = None) -> dict[str, float]:
    """Zero-shot CTE score of each model on unlabelled images: ``cte-dropout`` configured by ``options``.

    ``options`` gives the estimator's strength, consistency and repeats, the run's seed, the device, axes, layer
    and code policy, as for ``rank`` (its ``estimator`` is not used: fine-tuning is compared with CTE-dropout).
    Models that cannot be scored, or have no valid score, are left out.
    """
    import math

    from bioimage_cte.run.ranking import build_ranking
    from bioimage_cte.run.scoring import rank_models

    estimator = options.make_estimator("cte-dropout")
    results, failures = rank_models(sources, image_paths, [estimator], options, on_image=on_image)
    ranking = build_ranking(results, estimator, failures=failures, seed=options.seed)
    return {s.name: float(s.score) for s in ranking.scores if math.isfinite(s.score)}


def run_finetune_study(
    models: Sequence[str | Path],
    images: str | Path,
    labels: str | Path,
    options: RankOptions,
    *,
    ks: Sequence[KValue] = (1, 5, "all"),
    config: FinetuneConfig = FinetuneConfig(),
    n_test: int = 2,
    cte: bool = True,
    scratch: bool = True,
    export: Path | None = None,
    on_image: Callable[[], None] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole fine-tuning study from what a user names: models (with ``options.tag``), images and labels.

    Scores the models zero-shot with CTE (when ``cte``), fine-tunes each on k labelled images and returns the
    JSON of :class:`FinetuneBenchmark` with the image paths. ``on_image`` is called once per zero-shot image,
    ``on_run`` with one line per fine-tuning run as it ends.
    """
    from bioimage_cte.predict.images import list_images, load_labels, load_target
    from bioimage_cte.zoo.sources import select_models

    sources = select_models(models, tag=options.tag)
    paths = list_images(images)
    label_arrays = load_labels(paths, labels, axes=options.axes)
    arrays = [load_target(p, axes=options.axes) for p in paths]
    zero_shot = zero_shot_cte(sources, paths, options, on_image=on_image) if cte else None
    bench = run_finetune_benchmark(
        [(s.name, s.location) for s in sources], arrays, label_arrays, ks=ks, n_test=n_test, config=config,
        scratch=scratch, zero_shot=zero_shot, export_dir=export, code_policy=options.code_policy(),
        on_run=on_run)
    payload = bench.to_json_dict()
    payload["images"] = [str(p) for p in paths]
    return payload
