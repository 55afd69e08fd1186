"""The ``bioimage-cte`` command line.

Each command parses its options, calls library functions and renders the result with rich.
torch and bioimageio are imported inside the commands, so ``bioimage-cte --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bioimage_cte.cli.output import (  # noqa: E402
    ReadableHelp,
    agreement_table,
    dice_summary,
    err_console,
    finetune_table,
    new_folder,
    print_failures,
    ranking_headline,
    ranking_table,
    say,
    tell,
    tell_written,
    transfer_table,
    write_evaluation,
    zoo_table,
)

app = typer.Typer(
    name="bioimage-cte",
    help="Rank BioImage Model Zoo segmentation models on your own unlabeled images (CTE, arXiv 2503.00450).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=ReadableHelp,
)
console = Console()

from bioimage_cte.cte.registry import LABEL_FREE  # noqa: E402  (numpy/scipy only, no torch)
from bioimage_cte.run.options import RankOptions  # noqa: E402

if TYPE_CHECKING:
    from bioimage_cte.run.pipeline import Progress

from bioimage_cte.cli.options import (  # noqa: E402
    ESTIMATOR_HELP,
    BatchSizeOpt,
    DebugOpt,
    DeviceOpt,
    Estimator,
    ImagesOpt,
    LabelsOpt,
    LearningRateOpt,
    ModelsArg,
    PatchOpt,
    ReportImagesOpt,
    SeedOpt,
    StepsOpt,
    StrictOpt,
    TagOpt,
    TrustCodeOpt,
    TrustLibraryOpt,
    rank_options,
    with_rank_options,
)


def _show_version(value: bool) -> None:
    if value:
        from bioimage_cte.base.version import __version__

        console.print(f"bioimage-cte {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Rank BioImage Model Zoo segmentation models on your own unlabeled images (CTE, arXiv 2503.00450)."""


def _fail(e: BaseException, debug: bool) -> None:
    if debug:
        raise e
    say("[bold red]error:[/]", str(e))
    raise typer.Exit(1)


def _quiet_libraries() -> None:
    # bioimageio.core draws a tqdm bar per tiled image; our own progress bar is the one that matters.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # TensorFlow (Keras weights) logs start-up notes and "No training configuration found" per model through absl
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def _progress(label: str = "scoring") -> Iterator[Progress]:
    """A rich bar on a terminal, plain periodic lines in a log (bioimage_cte.cli.progress)."""
    from bioimage_cte.cli.progress import progress_display

    with progress_display(label, err_console) as progress:
        yield progress


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from bioimage_cte.base.fileutils import write_atomic

    write_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


@app.command()
@with_rank_options
def rank(
    models: ModelsArg,
    images: ImagesOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the ranking as JSON here ('-': "
                                                "standard output); checked before any model runs.")] = None,
    estimator: Annotated[Estimator | None, typer.Option(help=ESTIMATOR_HELP, show_default=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Also write a self-contained HTML report "
                                                "(charts, per-image scores, overlays of the top and bottom "
                                                "models).")] = None,
    strict: StrictOpt = False,
    report_images: ReportImagesOpt = 3,
    good_enough: Annotated[float, typer.Option("--good-enough", min=0, max=1, help="Predicted Dice that is good "
                                               "enough: below it, even at the interval's upper bound, the summary "
                                               "advises labelling a few images and fine-tuning.")] = 0.7,
    debug: DebugOpt = False,
    options: RankOptions | None = None,
) -> None:
    """Rank models by estimated transferability to the target images (no labels needed).

    Exit codes: 0 ranked (models that failed are listed, and recorded in the JSON); 1 bad input or setup, found
    before any model ran (images, device, --layer in no model, output path), or the ranking could not be written
    where asked (it is then in the fallback file the message names); 2 wrong usage; 3 no model could be ranked;
    4 with --strict, some models failed or images were skipped. '-o -' (or '-o /dev/stdout') writes the JSON
    to standard output.
    """
    from bioimage_cte.outputs.destinations import check_destination, is_stdout

    _quiet_libraries()
    to_stdout = output is not None and is_stdout(output)
    out = err_console if to_stdout else console  # with '-o -' standard output carries the JSON and nothing else
    created = {path: new_folder(path) for path in (output, report) if path is not None}
    try:
        for path, option in ((output, "--output"), (report, "--report")):
            if path is not None:
                check_destination(path, option=option)
        from bioimage_cte.run.pipeline import rank as rank_models

        with _progress() as progress:
            run = rank_models(models, images, options, progress=progress)
    except Exception as e:
        _fail(e, debug)
    ranking = run.ranking
    out.print(ranking_table(ranking, ranking_headline(ranking, len(run.images)), width=out.width))
    if run.options.budget != "all":
        out.print(f"budget {run.options.budget}: scored {len(run.images)} of {run.n_images_found} images "
                  f"({run.stop_reason})")
    print_failures(ranking.failures)
    if (summary := dice_summary(ranking, good_enough=good_enough)) is not None:
        # prose wrapped at the console's width (a log's 80 columns), never inside a word: names stay whole
        out.print(textwrap.fill(summary, width=out.width, break_long_words=False, break_on_hyphens=False),
                  highlight=False, soft_wrap=True)
    payload = run.to_json_dict(images=images)
    code = _rank_exit_code(ranking, bool(run.skipped_images), strict=strict)
    if output is not None and not _put_json(output, payload, out, created=created.get(output)):
        code = code or ExitCode.ERROR
    if report is not None:
        _write_report(payload, report, list(run.images), None, debug, n_images=report_images, out=out,
                      created=created.get(report))
    raise typer.Exit(int(code))


class ExitCode(IntEnum):
    """What ``rank`` exits with (documented in its help and the README)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOTHING_RANKED = 3
    SOME_FAILED = 4


def _rank_exit_code(ranking, skipped_images: bool, *, strict: bool) -> ExitCode:
    scored = [s for s in ranking.scores if s.score == s.score]
    if not scored:
        n = len(ranking.scores) + len(ranking.failures)
        err_console.print(f"[bold red]error:[/] none of the {n} models could be ranked; see the reasons above",
                          highlight=False, soft_wrap=True)
        return ExitCode.NOTHING_RANKED
    if strict and (len(scored) < len(ranking.scores) or ranking.failures or skipped_images):
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _put_json(output: Path, payload: dict[str, Any], out: Console, *, created: Path | None = None) -> bool:
    """Write the JSON to ``output`` ('-': standard output); if that fails, to a fallback file. False if it failed."""
    from bioimage_cte.outputs.destinations import is_stdout, write_or_fallback

    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    if is_stdout(output):
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    written = write_or_fallback(output, text.encode())
    if written.problem is None:
        tell_written(out, "ranking", output, created)
        return True
    if written.path is not None:
        say("[bold red]error:[/]", f"{written.problem}; the ranking was written to {written.path} instead")
    else:
        say("[bold red]error:[/]", f"{written.problem}, and no fallback file could be written either; the ranking "
                                   "follows as JSON on standard output")
        sys.stdout.write(text)
    return False


@app.command()
@with_rank_options
def evaluate(
    models: ModelsArg,
    images: ImagesOpt,
    labels: LabelsOpt,
    estimators: Annotated[list[Estimator] | None, typer.Option("--estimator", "-e", help="Estimators to "
                                                               "compare (repeat the option); default: all "
                                                               "label-free ones.")] = None,
    few_label: Annotated[int, typer.Option(help="Also report the few-label oracle: true Dice on the first k "
                                           "labelled images (0 to skip).")] = 2,
    metric: Annotated[str | None, typer.Option(help="True-performance metric to rank by: dice, f1 or map "
                                               "(default: dice for semantic, map for instance).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the evaluation here: a .csv file "
                                                "gets one row per estimator, any other name the full JSON.")] = None,
    debug: DebugOpt = False,
    options: RankOptions | None = None,
) -> None:
    """Compare every estimator's ranking with the ranking by true performance on labelled images."""
    _quiet_libraries()
    created = new_folder(output)
    try:
        from bioimage_cte.run.pipeline import evaluate as evaluate_models

        names = [str(e) for e in estimators] if estimators else list(LABEL_FREE)
        with _progress() as progress:
            run = evaluate_models(models, images, labels, options, estimators=names, few_label=few_label,
                                  metric=metric, progress=progress)
    except Exception as e:
        _fail(e, debug)
    evaluation = run.evaluation
    console.print(agreement_table(evaluation, len(run.sources), len(run.images), width=console.width))
    print_failures(next(iter(evaluation.rankings.values())).failures if evaluation.rankings else run.failures)
    if output is not None:
        write_evaluation(evaluation, output)
        tell_written(console, "evaluation", output, created)


def _write_report(ranking_json: dict, path: Path, paths: list, evaluation_json: dict | None, debug: bool,
                  n_images: int = 3, out: Console = console, created: Path | None = None) -> None:
    try:
        from bioimage_cte.outputs.reports import write_html_report
        from bioimage_cte.run.pipeline import report_overlays

        overlays = None
        if n_images:
            with _progress("report: re-running the best and the worst model") as progress:
                overlays = report_overlays(ranking_json, paths, n_images=n_images, n_models=1, progress=progress)
        write_html_report(ranking_json, path, image_paths=paths, evaluation_json=evaluation_json, overlays=overlays)
    except Exception as e:
        _fail(e, debug)
    tell_written(out, "report", path, created)


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
    created = None if output is None else new_folder(output / "x")
    try:
        from bioimage_cte.base.errors import AnnotationError
        from bioimage_cte.outputs.annotate import annotate_from_ranking
        from bioimage_cte.predict.images import list_images

        try:
            done = annotate_from_ranking(ranking, target=target, images=list_images(images), output=output,
                                         backup=not no_backup)
        except AnnotationError as e:
            for path in e.written:
                tell(console, f"annotated {path}")
            for source, reason in e.failures.items():
                say("[yellow]not annotated[/]", f"{source}: {reason}")
            raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as e:
        _fail(e, debug)
    for path in done:
        tell(console, f"annotated {path}")
    if created is not None:
        tell(console, f"created the folder {created} for --output")


@app.command()
def report(
    ranking: Annotated[Path, typer.Argument(help="Ranking JSON written by 'bioimage-cte rank --output', or a "
                                            "folder of them (a zoo run's rankings/): then a leaderboard page.",
                                            show_default=False)],
    images: Annotated[str | None, typer.Option("--images", "-i", help="The ranking's target images (folder, glob "
                                               "or file); default: the folder the ranking records.",
                                               show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file to write; default: the "
                                                "ranking's name with .html (leaderboard.html for a folder), in "
                                                "the working folder.")] = None,
    evaluation: Annotated[Path | None, typer.Option(help="Evaluation JSON from 'bioimage-cte evaluate --output' "
                                                    "(adds CTE vs true performance).")] = None,
    zoo_reports: Annotated[Path | None, typer.Option(help="Also write per-model zoo reports (the collection's "
                                                     "per-tool report shape) under this folder.")] = None,
    target: Annotated[str, typer.Option(help="Target name used in the zoo reports.")] = "target",
    report_images: ReportImagesOpt = 3,
    debug: DebugOpt = False,
) -> None:
    """Render a ranking as one self-contained HTML page, and optionally as zoo reports; a folder of rankings as a
    leaderboard (every model on every target) with a page per target beside it."""
    if ranking.is_dir():
        _write_leaderboard(ranking, output or Path("leaderboard.html"), debug)
        return
    try:
        from bioimage_cte.base.version import __version__
        from bioimage_cte.outputs.zoo_reports import write_zoo_reports
        from bioimage_cte.predict.images import list_images
        from bioimage_cte.run.ranking import read_ranking

        payload = read_ranking(ranking)
        images = images or _recorded_images(payload, ranking)
        evaluation_json = json.loads(evaluation.read_text()) if evaluation else None
        if zoo_reports is not None:
            made = new_folder(zoo_reports / "x")
            for path in write_zoo_reports({target: payload}, zoo_reports, tool_version=__version__):
                tell_written(console, "zoo report", path)
            if made is not None:
                tell(console, f"created the folder {made} for --zoo-reports")
    except Exception as e:
        _fail(e, debug)
    output = output if output is not None else Path(ranking.stem + ".html")
    _write_report(payload, output, list_images(images), evaluation_json, debug, n_images=report_images,
                  created=new_folder(output))


def _recorded_images(payload: dict[str, Any], ranking: Path) -> str:
    recorded = str((payload.get("settings") or {}).get("images") or "")
    if not recorded or not Path(recorded).exists():
        raise typer.BadParameter(f"{ranking} records no images folder that exists here ({recorded or 'none'}); "
                                 "pass the target images with --images", param_hint="--images")
    return recorded


def _write_leaderboard(folder: Path, output: Path, debug: bool) -> None:
    created = new_folder(output)
    try:
        from bioimage_cte.outputs.leaderboard import read_rankings, target_summaries, write_zoo_pages

        rankings = read_rankings(folder)
        write_zoo_pages(rankings, output.parent, name=output.name)
    except Exception as e:
        _fail(e, debug)
    estimators = sorted({str((r.get("settings") or {}).get("estimator", "?")) for r in rankings.values()})
    console.print(zoo_table(target_summaries(rankings), ", ".join(estimators), width=console.width))
    tell_written(console, f"leaderboard of {len(rankings)} targets (pages per target in "
                          f"{output.parent / 'targets'})", output, created)


@app.command("zoo-rank")
@with_rank_options
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
    reports: Annotated[bool, typer.Option(help="Write the per-model zoo reports under OUTPUT_DIR/reports.")] = True,
    match_task: Annotated[bool, typer.Option(help="Per target, rank only the models tagged with the task named in "
                                             "the target's target.yaml.")] = False,
    refresh: Annotated[bool, typer.Option(help="Score everything again, ignoring the results database.")] = False,
    retries: Annotated[int, typer.Option(help="Retries of a failing model before it is recorded as failed.")] = 1,
    dask_address: Annotated[str | None, typer.Option(help="Score on Dask: 'local' for a local cluster, or "
                                                     "tcp://HOST:PORT of an existing scheduler.")] = None,
    workers: Annotated[int | None, typer.Option(help="Workers of the local Dask cluster.")] = None,
    cron: Annotated[str | None, typer.Option(help="Serve the flow on this cron schedule instead of running once, "
                                             "e.g. '0 3 * * 1' (Mondays 03:00); needs a Prefect server "
                                             "(PREFECT_API_URL).")] = None,
    timezone: Annotated[str | None, typer.Option(help="Time zone of --cron, e.g. Europe/Berlin.")] = None,
    global_limit: Annotated[int, typer.Option(min=0, help="Runs of the served deployment at once, enforced by "
                                              "the Prefect server (with --cron; 0: no limit).")] = 1,
    failure_webhook: Annotated[str | None, typer.Option(help="URL to POST a JSON message to when a model failed "
                                                        "or nothing was ranked (e.g. a Slack or Teams incoming "
                                                        "webhook).")] = None,
    deployment: Annotated[str, typer.Option(help="Name of the served deployment (with --cron).")] = "weekly",
    estimator: Annotated[Estimator | None, typer.Option(help=ESTIMATOR_HELP, show_default=False)] = None,
    debug: DebugOpt = False,
    options: RankOptions | None = None,
) -> None:
    """Rank a whole zoo on several targets through the Prefect flow (incremental; no Prefect server needed).

    The zoo and every target are checked before Prefect starts: a target that cannot be used is listed and the
    others are ranked. Exit codes: 0 done (failed models are listed); 1 the zoo or every target is unusable.
    """
    _quiet_libraries()
    created = new_folder(output_dir / "rankings")
    try:
        from bioimage_cte_flows import use_project_prefect_settings

        use_project_prefect_settings(debug=debug)  # before prefect is imported: Prefect tracebacks only with --debug
        from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking, serve_zoo_ranking

        run = ZooRunOptions(store_path=None if store is None else str(store), output_dir=str(output_dir),
                            annotate=annotate_cards, reports=reports, retries=retries, match_task=match_task,
                            refresh=refresh, dask_address=dask_address, workers=workers,
                            failure_webhook=failure_webhook)
        if cron is not None:
            console.print(f"serving deployment {deployment!r} on {cron!r}; stop with Ctrl+C")
            serve_zoo_ranking(zoo, targets, options, run, cron=cron, timezone=timezone, name=deployment,
                              global_limit=global_limit or None)
            return
        from bioimage_cte.cli.progress import PlainProgress

        lines = PlainProgress("zoo-rank", lambda text: err_console.print(escape(text), highlight=False, soft_wrap=True))
        summary = run_zoo_ranking(zoo, targets, options, run, on_progress=lines.stage)
    except Exception as e:
        _fail(e, debug)
    tell(console, f"scored {summary.scored} model x target pairs, {summary.cached} taken from {summary.store} "
                  f"({summary.model_loads} model loads)")
    for target, path in summary.rankings.items():
        tell(console, f"ranking of {target} written to {path}")
    if summary.rankings:
        from bioimage_cte.outputs.leaderboard import target_summaries

        rankings = {t: json.loads(Path(p).read_text()) for t, p in summary.rankings.items()}
        console.print(zoo_table(target_summaries(rankings), options.estimator, width=console.width))
    if summary.leaderboard:
        tell_written(console, "leaderboard (every model on every target)", summary.leaderboard)
    if created is not None and created.exists():
        tell(console, f"created the folder {created} for --output-dir")
    for failed in summary.failed:
        what = "skipped" if failed.stage == "skipped" else "failed"
        say(f"[yellow]{what}[/]", f"{failed.model} on {failed.target}: {failed.reason}")
    for pair in summary.unfit:
        say("[dim]does not fit[/]", f"{pair.model} on {pair.target}: {pair.reason}")
    for where, problem in summary.problems.items():
        say(f"[yellow]{escape(where)}[/]:", problem)
    if not summary.ranked:
        say("[bold red]error:[/]", f"nothing ranked: {summary.message}")
        raise typer.Exit(1)


@app.command("transfer-matrix")
def transfer_matrix(
    zoo: Annotated[Path, typer.Option(help="Folder of model packages.")] = Path("resources/zoo"),
    data: Annotated[Path, typer.Option(help="Folder of targets, each with images/ and labels/.")] = Path(
        "resources/data"),
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write (model, target, metric, value); "
                                         "the shipped resources/zoo/transfer_matrix.csv is only rewritten when "
                                         "named here.")] = Path("transfer_matrix.csv"),
    device: DeviceOpt = "cpu",
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate every zoo model on every labelled target: the ground truth rankings are judged against.

    Rows are written to the CSV as each model finishes a target, so a run that is stopped keeps them. Exit codes
    as for rank: 0 written (failed models are listed); 1 bad input or the CSV could not be written; 3 no model
    could be evaluated; 4 with --strict, some models failed.
    """
    _quiet_libraries()
    created = new_folder(output)
    try:
        from bioimage_cte.studies.transfer import TransferMatrixWriter, compute_transfer_matrix, summarize

        with _progress("evaluating") as progress, TransferMatrixWriter(output) as write:
            rows, failures = compute_transfer_matrix(zoo, data, options=rank_options(device=device), progress=progress,
                                                     on_rows=write)
    except Exception as e:
        _fail(e, debug)
    tell_written(console, f"transfer matrix ({len(rows)} rows)", output, created)
    console.print(transfer_table(summarize(rows, metric="dice"), width=console.width))
    print_failures(failures)
    if not rows:
        err_console.print(f"[bold red]error:[/] none of the {len(failures)} models could be evaluated; see the "
                          "reasons above", highlight=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.NOTHING_RANKED))
    raise typer.Exit(int(ExitCode.SOME_FAILED if strict and failures else ExitCode.OK))


KOpt = Annotated[list[str] | None, typer.Option("--k", help="Labelled images to fine-tune on (repeat the option); "
                                               "'all' = every image outside the test split. Default: 1, 5, all.")]


@app.command("finetune-benchmark")
def finetune_benchmark(
    models: ModelsArg,
    images: ImagesOpt,
    labels: LabelsOpt,
    k: KOpt = None,
    steps: StepsOpt = 200,
    n_test: Annotated[int, typer.Option(help="Labelled images held out for testing (seeded choice).")] = 2,
    patch: PatchOpt = 96,
    batch_size: BatchSizeOpt = 4,
    learning_rate: LearningRateOpt = 1e-3,
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
    options = rank_options(seed=seed, tag=tag, trust_code=trust_code, trust_library=trust_library)
    try:
        k_values = [kv if kv == "all" else int(kv) for kv in (k or ["1", "5", "all"])]
    except ValueError as e:
        raise typer.BadParameter(f"--k {k}: use positive integers or 'all'") from e
    try:
        from bioimage_cte.studies.finetune import FinetuneConfig, run_finetune_study

        config = FinetuneConfig(steps=steps, batch_size=batch_size, patch=patch, seed=seed,
                                learning_rate=learning_rate, eval_every=eval_every)
        with _progress("zero-shot CTE") as progress:
            payload = run_finetune_study(models, images, labels, options, ks=k_values, config=config, n_test=n_test,
                                         cte=cte, scratch=scratch, export=export, on_image=progress.image,
                                         on_run=lambda text: err_console.print(f"fine-tuned {text}", highlight=False))
        if output is not None:
            _write_json(output, payload)
            tell_written(console, "results", output)
        if report is not None:
            from bioimage_cte.studies.finetune_report import write_finetune_report

            write_finetune_report({Path(images).name or "target": payload}, report)
            tell_written(console, "report", report)
    except Exception as e:
        _fail(e, debug)
    console.print(finetune_table(payload))
    for name, reason in payload["failures"].items():
        say("[yellow]failed[/]", f"{name}: {reason}")


def main() -> None:
    """Entry point of the ``bioimage-cte`` console script."""
    app()

