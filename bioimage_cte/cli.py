"""The ``bioimage-cte`` command line.

Each command parses its options, calls library functions and renders the result with rich.
torch and bioimageio are imported inside the commands, so ``bioimage-cte --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="bioimage-cte",
    help="Rank BioImage Model Zoo segmentation models on your own unlabeled images (CTE, arXiv 2503.00450).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ESTIMATOR_NAMES = ("cte-dropout", "cte-input", "confidence", "entropy", "tta", "mc-dropout", "consensus", "random")
Estimator = Enum("Estimator", {n.replace("-", "_"): n for n in ESTIMATOR_NAMES}, type=str)  # type: ignore[misc]


class Task(StrEnum):
    semantic = "semantic"
    instance = "instance"


class Perturbation(StrEnum):
    gaussian = "gaussian"
    brightness = "brightness"
    contrast = "contrast"
    gamma = "gamma"


ModelsArg = Annotated[
    list[str],
    typer.Argument(help="Models: rdf.yaml files, package folders or zips, folders of packages, a collection "
                   "index JSON (path or URL), or RDF URLs.", show_default=False),
]
ImagesOpt = Annotated[str, typer.Option("--images", "-i", help="Folder, glob ('data/*.tif') or file of target "
                                        "images (.tif, .tiff, .png, .npy).", show_default=False)]
AxesOpt = Annotated[str | None, typer.Option(help="Axes of the image files when ambiguous, e.g. 'yx', 'cyx', "
                                             "'zyx', 'yxc'.")]
TaskOpt = Annotated[Task, typer.Option(help="semantic: foreground masks (soft consistency by default); instance: "
                                       "instance labels, 1 - adapted Rand error.")]


class ConsistencyKind(StrEnum):
    soft = "soft"
    hard = "hard"
    instance = "instance"


ConsistencyOpt = Annotated[ConsistencyKind | None, typer.Option(
    help="Consistency score: soft (effective invariance, default for semantic), hard (1 - disagreement on the "
         "union foreground), instance (default for --task instance).")]
PerturbationOpt = Annotated[Perturbation, typer.Option(help="Input perturbation for cte-input (applied before "
                                                       "the model's own preprocessing).")]
StrengthOpt = Annotated[float | None, typer.Option(help="Perturbation strength: dropout rate p for cte-dropout "
                                                   "(default 0.2), fraction of the image range for cte-input "
                                                   "(default 0.1).")]
DeviceOpt = Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda:0.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for perturbations; the same seed reproduces scores exactly.")]
LayerOpt = Annotated[str | None, typer.Option(help="Layer to perturb for grey-box estimators (module name); "
                                              "default: the bottleneck, found automatically.")]
WeightsOpt = Annotated[str | None, typer.Option("--weight-format", help="Weights format for black-box "
                                                "prediction (e.g. torchscript, onnx); default: bioimageio's "
                                                "priority order.")]
RepeatsOpt = Annotated[int, typer.Option(help="Perturbed runs per image (their consistencies are averaged).")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Rank only the models whose RDF has this tag, e.g. "
                                            "'nuclei' (CTE compares models made for the same task).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="Run Python code shipped inside model packages "
                                            "(architecture files, custom processing). Off by default: only "
                                            "architectures from trusted installed libraries run, other models "
                                            "use their torchscript/onnx weights or are skipped with the reason.")]
TrustLibraryOpt = Annotated[list[str] | None, typer.Option("--trust-library", help="Also trust architectures "
                                                           "imported from this installed library (import prefix, "
                                                           "e.g. mylab_nets; repeat the option).")]


def _code_policy(trust_code: bool, trust_library: list[str] | None):
    from bioimage_cte.trust import CodePolicy

    return CodePolicy.with_libraries(trust_library or (), trust_code=trust_code)


def _fail(e: BaseException, debug: bool) -> None:
    if debug:
        raise e
    err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _quiet_libraries() -> None:
    # bioimageio.core draws a tqdm bar per tiled image; our own progress bar is the one that matters.
    os.environ.setdefault("TQDM_DISABLE", "1")


def _estimator(name: str, task: Task, perturbation: Perturbation, strength: float | None, repeats: int,
               consistency: ConsistencyKind | None = None):
    from bioimage_cte.estimators import make_estimator

    consistency = consistency.value if consistency else ("instance" if task is Task.instance else "soft")
    return make_estimator(name, p=strength, strength=strength, kind=perturbation.value, consistency=consistency,
                          repeats=repeats)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False, disable=not err_console.is_terminal)


def _run(models: list[str], images: str, estimators: list, *, labels_spec: str | None = None, tag: str | None,
         axes: str | None, device: str, seed: int, layer: str | None, weight_format: str | None, code_policy=None):
    """Find models and images, then score every model (with a progress bar over models x images)."""
    from bioimage_cte.errors import InvalidModelError
    from bioimage_cte.images import check_images, list_images, load_labels
    from bioimage_cte.ranking import rank_models
    from bioimage_cte.sources import filter_by_tag, find_models

    sources = find_models(models)
    if tag:
        sources = filter_by_tag(sources, tag)
        if not sources:
            raise InvalidModelError(f"no model in {' '.join(models)} has the tag {tag!r}; drop --tag or pick "
                                    "a tag from the models' rdf.yaml")
    paths = list_images(images)
    for warning in check_images(paths, axes=axes).warnings:  # fails on bad images before any model is loaded
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    labels = load_labels(paths, labels_spec, axes=axes) if labels_spec else None
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(sources) * len(paths))
        results, failures = rank_models(
            sources, paths, estimators, labels=labels, axes=axes, devices=[device], seed=seed, layer=layer,
            weight_format=weight_format, code_policy=code_policy, on_image=lambda: progress.advance(task),
            on_model=lambda s: progress.update(task, description=f"scoring {s.name}"),
        )
    return sources, paths, results, failures


def _ranking_table(ranking, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (("rank", "right"), ("model", "left"), ("score", "right"), ("images", "right"),
                            ("empty", "right"), ("note", "left")):
        table.add_column(column, justify=justify)
    for s in ranking.scores:
        score = "n/a" if s.score != s.score else f"{s.score:.4f}"
        table.add_row(str(s.rank), s.name, score, str(s.n_images), str(s.n_empty), s.note)
    return table


def _print_failures(failures) -> None:
    for f in failures:
        what = "skipped" if f.stage == "skipped" or ": skipped" in f.reason else "failed"
        err_console.print(f"[yellow]{what}[/] {f.name} ({f.stage}): {f.reason}", highlight=False, soft_wrap=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from bioimage_cte.annotate import write_atomic

    write_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


@app.command()
def rank(
    models: ModelsArg,
    images: ImagesOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the ranking as JSON here.")] = None,
    estimator: Annotated[Estimator, typer.Option(help="Transferability estimator.")] = "cte-dropout",  # type: ignore[assignment]
    task: TaskOpt = Task.semantic,
    consistency: ConsistencyOpt = None,
    perturbation: PerturbationOpt = Perturbation.gaussian,
    strength: StrengthOpt = None,
    repeats: RepeatsOpt = 1,
    axes: AxesOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    layer: LayerOpt = None,
    weight_format: WeightsOpt = None,
    tag: TagOpt = None,
    report: Annotated[Path | None, typer.Option("--report", help="Also write a self-contained HTML report "
                                                "(charts, per-image scores, overlays of the top and bottom "
                                                "models).")] = None,
    trust_code: TrustCodeOpt = False,
    trust_library: TrustLibraryOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Rank models by estimated transferability to the target images (no labels needed)."""
    _quiet_libraries()
    try:
        from bioimage_cte.ranking import build_ranking

        est = _estimator(Estimator(estimator).value, task, perturbation, strength, repeats, consistency)
        sources, paths, results, failures = _run(models, images, [est], tag=tag, axes=axes, device=device,
                                                 seed=seed, layer=layer, weight_format=weight_format,
                                                 code_policy=_code_policy(trust_code, trust_library))
        ranking = build_ranking(results, est, failures=failures, seed=seed)
    except Exception as e:
        _fail(e, debug)
    console.print(_ranking_table(ranking, f"{est.name} ranking of {len(sources)} models on {len(paths)} images"))
    _print_failures(ranking.failures)
    payload = ranking.to_json_dict()
    payload["settings"].update({"images": images, "n_images": len(paths), "task": task.value, "tag": tag,
                                "seed": seed, "axes": axes, "device": device, "layer": layer,
                                "weight_format": weight_format, "trust_code": trust_code,
                                "trusted_libraries": trust_library or []})
    if output is not None:
        _write_json(output, payload)
        console.print(f"ranking written to {output}")
    if report is not None:
        _write_report(payload, report, paths, None, debug)


@app.command()
def evaluate(
    models: ModelsArg,
    images: ImagesOpt,
    labels: Annotated[str, typer.Option("--labels", "-l", help="Folder of label images with the same file "
                                        "stems as the images (instance labels, 0 = background).",
                                        show_default=False)],
    estimators: Annotated[list[Estimator] | None, typer.Option("--estimator", "-e", help="Estimators to "
                                                               "compare (repeat the option); default: all "
                                                               "label-free ones.")] = None,
    few_label: Annotated[int, typer.Option(help="Also report the few-label oracle: true Dice on the first k "
                                           "labelled images (0 to skip).")] = 2,
    metric: Annotated[str | None, typer.Option(help="True-performance metric to rank by: dice, f1 or map "
                                               "(default: dice for semantic, map for instance).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the evaluation as JSON here.")] = None,
    task: TaskOpt = Task.semantic,
    consistency: ConsistencyOpt = None,
    perturbation: PerturbationOpt = Perturbation.gaussian,
    strength: StrengthOpt = None,
    repeats: RepeatsOpt = 1,
    axes: AxesOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    layer: LayerOpt = None,
    weight_format: WeightsOpt = None,
    tag: TagOpt = None,
    trust_code: TrustCodeOpt = False,
    trust_library: TrustLibraryOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compare every estimator's ranking with the ranking by true performance on labelled images."""
    _quiet_libraries()
    try:
        from bioimage_cte.estimators import LABEL_FREE, make_estimator
        from bioimage_cte.ranking import evaluate_rankings

        names = [Estimator(e).value for e in estimators] if estimators else list(LABEL_FREE)
        ests = [_estimator(n, task, perturbation, strength, repeats, consistency) for n in names]
        if few_label > 0:
            ests.append(make_estimator("few-label", k=few_label))
        sources, paths, results, failures = _run(models, images, ests, labels_spec=labels, tag=tag, axes=axes,
                                                 device=device, seed=seed, layer=layer,
                                                 weight_format=weight_format,
                                                 code_policy=_code_policy(trust_code, trust_library))
        chosen = metric or ("map" if task is Task.instance else "dice")
        evaluation = evaluate_rankings(results, ests, metric=chosen, failures=failures, seed=seed)
    except Exception as e:
        _fail(e, debug)
    console.print(_agreement_table(evaluation, len(sources), len(paths)))
    _print_failures(next(iter(evaluation.rankings.values())).failures if evaluation.rankings else failures)
    if output is not None:
        _write_json(output, evaluation.to_json_dict())
        console.print(f"evaluation written to {output}")


def _write_report(ranking_json: dict, path: Path, paths: list, evaluation_json: dict | None, debug: bool) -> None:
    try:
        from bioimage_cte.reports import write_html_report

        with err_console.status("writing the HTML report"):
            write_html_report(ranking_json, path, image_paths=paths, evaluation_json=evaluation_json)
    except Exception as e:
        _fail(e, debug)
    console.print(f"report written to {path}")


@app.command()
def annotate(
    ranking: Annotated[Path, typer.Argument(help="Ranking JSON written by 'bioimage-cte rank --output'.",
                                            show_default=False)],
    target: Annotated[str, typer.Option(help="Name of the target dataset, as it should appear on the model "
                                        "cards (one entry per target; re-running a target replaces it).",
                                        show_default=False)],
    images: ImagesOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write annotated copies into this "
                                                "folder instead of editing the packages in place.")] = None,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Do not keep a .bak copy of packages edited "
                                            "in place.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a target's ranking onto each model's card (config.bioimage_cte in its rdf.yaml)."""
    try:
        from bioimage_cte.annotate import annotate_from_ranking
        from bioimage_cte.errors import AnnotationError
        from bioimage_cte.images import list_images

        try:
            written = annotate_from_ranking(ranking, target=target, images=list_images(images), output=output,
                                            backup=not no_backup)
        except AnnotationError as e:
            for path in e.written:
                console.print(f"annotated {path}")
            for source, reason in e.failures.items():
                err_console.print(f"[yellow]not annotated[/] {source}: {reason}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as e:
        _fail(e, debug)
    for path in written:
        console.print(f"annotated {path}")


@app.command()
def report(
    ranking: Annotated[Path, typer.Argument(help="Ranking JSON written by 'bioimage-cte rank --output'.",
                                            show_default=False)],
    images: ImagesOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("ranking.html"),
    evaluation: Annotated[Path | None, typer.Option(help="Evaluation JSON from 'bioimage-cte evaluate --output' "
                                                    "(adds CTE vs true performance).")] = None,
    zoo_reports: Annotated[Path | None, typer.Option(help="Also write per-model zoo reports (the collection's "
                                                     "per-tool report shape) under this folder.")] = None,
    target: Annotated[str, typer.Option(help="Target name used in the zoo reports.")] = "target",
    debug: DebugOpt = False,
) -> None:
    """Render a ranking as one self-contained HTML page, and optionally as zoo reports."""
    try:
        from bioimage_cte import __version__
        from bioimage_cte.images import list_images
        from bioimage_cte.reports import write_zoo_reports

        payload = json.loads(ranking.read_text())
        evaluation_json = json.loads(evaluation.read_text()) if evaluation else None
        if zoo_reports is not None:
            for path in write_zoo_reports({target: payload}, zoo_reports, tool_version=__version__):
                console.print(f"zoo report written to {path}")
    except Exception as e:
        _fail(e, debug)
    _write_report(payload, output, list_images(images), evaluation_json, debug)


def _agreement_table(evaluation, n_models: int, n_images: int) -> Table:
    table = Table(title=f"Agreement with true {evaluation.metric} ({n_models} models, {n_images} images)",
                  title_justify="left")
    for column in ("estimator", "pearson", "spearman", "spearman 95% CI", "kendall", "weighted tau", "top-1",
                   "regret", "picked"):
        table.add_column(column, justify="left" if column in ("estimator", "picked") else "right")
    for name, a in evaluation.agreement.items():
        picked = evaluation.rankings[name].scores[0].name if evaluation.rankings[name].scores else "-"
        ci = "-" if a.spearman_ci is None else f"[{a.spearman_ci[0]:.2f}, {a.spearman_ci[1]:.2f}]"
        table.add_row(name, f"{a.pearson:.3f}", f"{a.spearman:.3f}", ci, f"{a.kendall:.3f}",
                      f"{a.weighted_tau:.3f}", "yes" if a.top1_hit else "no", f"{a.regret:.3f}", picked)
    return table


@app.command("zoo-rank")
def zoo_rank(
    zoo: Annotated[str, typer.Argument(help="Folder of model packages, or a collection index JSON (path or URL).",
                                       show_default=False)],
    targets: Annotated[list[Path], typer.Argument(help="Target folders, each with images/ (labels/ optional).",
                                                  show_default=False)],
    output_dir: Annotated[Path, typer.Option(help="Where rankings and zoo reports are written.")] = Path(
        "zoo-ranking"),
    store: Annotated[Path | None, typer.Option(help="Results database; default ~/.cache/bioimage-cte/"
                                               "results.sqlite. Re-runs score only what changed.")] = None,
    annotate_cards: Annotated[bool, typer.Option("--annotate", help="Write each target's ranking back onto the "
                                                 "packages (in place, with backups).")] = False,
    strength: StrengthOpt = None,
    retries: Annotated[int, typer.Option(help="Retries of a failing model before it is recorded as failed.")] = 1,
    dask_address: Annotated[str | None, typer.Option(help="Score on Dask: 'local' for a local cluster, or "
                                                     "tcp://HOST:PORT of an existing scheduler.")] = None,
    workers: Annotated[int | None, typer.Option(help="Workers of the local Dask cluster.")] = None,
    tag: TagOpt = None,
    seed: SeedOpt = 0,
    trust_code: TrustCodeOpt = False,
    trust_library: TrustLibraryOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Rank a whole zoo on several targets through the Prefect flow (incremental; no Prefect server needed)."""
    _quiet_libraries()
    try:
        from flows.zoo_ranking import run_zoo_ranking

        summary = run_zoo_ranking(zoo, [str(t) for t in targets], output_dir=str(output_dir),
                                  store_path=None if store is None else str(store), annotate=annotate_cards,
                                  p=strength, retries=retries, dask_address=dask_address, workers=workers,
                                  tag=tag, seed=seed, trust_code=trust_code, trusted_libraries=trust_library or None)
    except Exception as e:
        _fail(e, debug)
    console.print(f"scored {summary.scored} model x target pairs, {summary.cached} taken from {summary.store}")
    for target, path in summary.rankings.items():
        console.print(f"ranking of {target} written to {path}")
    for failed in summary.failed:
        what = "skipped" if ": skipped" in failed.reason else "failed"
        err_console.print(f"[yellow]{what}[/] {failed.model} on {failed.target}: {failed.reason}", highlight=False,
                          soft_wrap=True)
    for where, problem in summary.problems.items():
        err_console.print(f"[yellow]{where}[/]: {problem}", highlight=False, soft_wrap=True)


@app.command("transfer-matrix")
def transfer_matrix(
    zoo: Annotated[Path, typer.Option(help="Folder of model packages.")] = Path("resources/zoo"),
    data: Annotated[Path, typer.Option(help="Folder of targets, each with images/ and labels/.")] = Path(
        "resources/data"),
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write (model, target, metric, value).")] = Path(
        "resources/zoo/transfer_matrix.csv"),
    device: DeviceOpt = "cpu",
    debug: DebugOpt = False,
) -> None:
    """Evaluate every zoo model on every labelled target: the ground truth rankings are judged against."""
    _quiet_libraries()
    try:
        from bioimage_cte.transfer import compute_transfer_matrix, summarize, write_transfer_matrix

        with _progress() as progress:
            task = progress.add_task("evaluating", total=None)
            rows, failures = compute_transfer_matrix(zoo, data, devices=[device],
                                                     on_image=lambda: progress.advance(task))
        write_transfer_matrix(rows, output)
    except Exception as e:
        _fail(e, debug)
    table = Table(title=f"Foreground Dice per target ({output})", title_justify="left")
    for column in ("target", "best", "median", "worst", "spread"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, s in summarize(rows, metric="dice").items():
        table.add_row(target, f"{s['best']:.3f} ({s['best_model']})", f"{s['median']:.3f}",
                      f"{s['worst']:.3f} ({s['worst_model']})", f"{s['best'] - s['worst']:.3f}")
    console.print(table)
    _print_failures(failures)


KOpt = Annotated[list[str] | None, typer.Option("--k", help="Labelled images to fine-tune on (repeat the option); "
                                               "'all' = every image outside the test split. Default: 1, 5, all.")]


@app.command("finetune-benchmark")
def finetune_benchmark(
    models: ModelsArg,
    images: ImagesOpt,
    labels: Annotated[str, typer.Option("--labels", "-l", help="Folder of label images with the same file stems as "
                                        "the images (instance labels, 0 = background).", show_default=False)],
    k: KOpt = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps per model and k (the same budget for all).")] = 200,
    n_test: Annotated[int, typer.Option(help="Labelled images held out for testing (seeded choice).")] = 2,
    patch: Annotated[int, typer.Option(help="Training patch side in pixels.")] = 96,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 4,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate (cosine-annealed).")] = 1e-3,
    eval_every: Annotated[int, typer.Option(help="Evaluate the test Dice every N steps (convergence).")] = 25,
    scratch: Annotated[bool, typer.Option(help="Also train each architecture from scratch as the reference.")] = True,
    cte: Annotated[bool, typer.Option(help="Score the models zero-shot with CTE (cte-dropout) on all images and "
                                      "correlate with the fine-tuned Dice.")] = True,
    export: Annotated[Path | None, typer.Option("--export", help="Write every fine-tuned model as a bioimageio "
                                                "package into this folder.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the results as JSON here.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML report (Dice vs k, "
                                                "convergence, CKA heatmaps).")] = None,
    tag: TagOpt = None,
    seed: SeedOpt = 0,
    trust_code: TrustCodeOpt = False,
    trust_library: TrustLibraryOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune each model on k labelled images: does the zero-shot ranking predict the fine-tuned one?"""
    _quiet_libraries()
    try:
        payload = _finetune(models, images, labels, k or ["1", "5", "all"], tag=tag, cte=cte, scratch=scratch,
                            export=export, config=dict(steps=steps, batch_size=batch_size, patch=patch, seed=seed,
                                                       learning_rate=learning_rate, eval_every=eval_every),
                            n_test=n_test, code_policy=_code_policy(trust_code, trust_library))
        if output is not None:
            _write_json(output, payload)
            console.print(f"results written to {output}")
        if report is not None:
            from bioimage_cte.finetune_report import write_finetune_report

            write_finetune_report({Path(images).name or "target": payload}, report)
            console.print(f"report written to {report}")
    except Exception as e:
        _fail(e, debug)
    console.print(_finetune_table(payload))
    for name, reason in payload["failures"].items():
        err_console.print(f"[yellow]failed[/] {name}: {reason}", highlight=False, soft_wrap=True)


def _finetune(models: list[str], images: str, labels: str, ks: list[str], *, tag: str | None, cte: bool,
              scratch: bool, export: Path | None, config: dict[str, Any], n_test: int,
              code_policy: Any = None) -> dict[str, Any]:
    from bioimage_cte.errors import InvalidModelError
    from bioimage_cte.finetune import FinetuneConfig, run_finetune_benchmark, zero_shot_cte
    from bioimage_cte.images import list_images, load_labels
    from bioimage_cte.ranking import load_target
    from bioimage_cte.sources import filter_by_tag, find_models

    try:
        k_values = [kv if kv == "all" else int(kv) for kv in ks]
    except ValueError as e:
        raise typer.BadParameter(f"--k {ks}: use positive integers or 'all'") from e
    sources = filter_by_tag(find_models(models), tag) if tag else find_models(models)
    if not sources:
        raise InvalidModelError(f"no model found in {' '.join(models)}" + (f" with the tag {tag!r}" if tag else ""))
    paths = list_images(images)
    label_arrays = load_labels(paths, labels)
    arrays = [load_target(p) for p in paths]
    with _progress() as progress:
        zero_shot = None
        if cte:
            task = progress.add_task("zero-shot CTE", total=len(sources) * len(paths))
            zero_shot = zero_shot_cte(sources, paths, seed=config["seed"], code_policy=code_policy,
                                      on_image=lambda: progress.advance(task))
        n_runs = (len(sources) + (1 if scratch else 0)) * len(k_values)
        task = progress.add_task("fine-tuning", total=n_runs)
        bench = run_finetune_benchmark(
            [(s.name, s.location) for s in sources], arrays, label_arrays, ks=k_values, n_test=n_test,
            config=FinetuneConfig(**config), scratch=scratch, zero_shot=zero_shot, export_dir=export,
            code_policy=code_policy, on_run=lambda text: progress.update(task, advance=1, description=text))
    payload = bench.to_json_dict()
    payload["images"] = [str(p) for p in paths]
    return payload


def _finetune_table(payload: dict[str, Any]) -> Table:
    table = Table(title=f"Fine-tuning ({payload['config']['steps']} steps; k = 0 is zero-shot)", title_justify="left")
    for column in ("k", "models", "best", "best model", "spread", "best scratch", "Spearman(CTE, Dice)", "top-1",
                   "steps to 95%"):
        table.add_column(column, justify="left" if column in ("k", "best model") else "right")
    for s in payload["summary"]:
        table.add_row(s["k"], str(s["n_models"]), f"{s['best']:.3f}", s["best_model"], f"{s['spread']:.3f}",
                      "-" if s["scratch_dice"] is None else f"{s['scratch_dice']:.3f}",
                      "-" if s["spearman"] is None else f"{s['spearman']:.2f}",
                      "-" if s["top1_hit"] is None else ("yes" if s["top1_hit"] else "no"),
                      f"{s['mean_steps_to_95']:.0f}")
    return table


def main() -> None:
    """Entry point of the ``bioimage-cte`` console script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
