"""The options of the ``bioimage-cte`` commands, declared once with their help (rank, evaluate, zoo-rank), and how
the shared ones become one :class:`~bioimage_cte.run.options.RankOptions`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer

from bioimage_cte.cte.registry import ESTIMATORS
from bioimage_cte.run.options import RankOptions, default_estimator

# the choices come from the estimators' registry; few-label needs labels and is evaluate's --few-label
Estimator = StrEnum("Estimator", {n.replace("-", "_").replace("+", "_"): n for n in ESTIMATORS
                                  if not ESTIMATORS[n].needs_labels})
#: what --estimator's help says of the default (the library chooses it by --tag: RankOptions, default_estimator);
#: round brackets, as rich would take square ones for markup and drop them
ESTIMATOR_HELP = (f"Transferability estimator (default: {default_estimator('nuclei')} with --tag nuclei, "
                  f"else {default_estimator(None)}).")


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
                   "index JSON (path or URL), RDF URLs, or zoo IDs and DOIs (affable-shark, affable-shark/1.2, "
                   "10.5281/zenodo.5764892).", show_default=False),
]
ImagesOpt = Annotated[str, typer.Option("--images", "-i", help="Folder, glob ('data/*.tif') or file of target "
                                        "images (.tif, .tiff, .png, .npy).", show_default=False)]
LabelsOpt = Annotated[str, typer.Option("--labels", "-l", help="Folder of label images with the same file stems as the "
                                     "images (instance labels, 0 = background).", show_default=False)]
#: fine-tuning (``finetune``, ``finetune-benchmark``)
StepsOpt = Annotated[int, typer.Option(min=1, help="Optimiser steps (finetune-benchmark: per model and k, the same for "
                                        "all).")]
PatchOpt = Annotated[int, typer.Option(min=16, help="Training patch side in pixels.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Patches per step.")]
LearningRateOpt = Annotated[float, typer.Option(min=0.0, help="Adam learning rate (cosine-annealed).")]
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
StrengthOpt = Annotated[str | None, typer.Option(help="Perturbation strength: dropout rate p for cte-dropout "
                                                 "(default 0.2), fraction of the image range for cte-input "
                                                 "(default 0.1); 'auto' chooses it per family from the "
                                                 "candidates' predictions on 3 images (cte, cte-dropout, "
                                                 "cte-input).")]
ChannelsOpt = Annotated[str | None, typer.Option(help="Image channels to feed, in this order, e.g. '0,2': models "
                                                 "taking 2 channels get channels 0 and 2, single-channel models "
                                                 "channel 0 (default: all channels; averaged for single-channel "
                                                 "models).")]
InputsOpt = Annotated[str | None, typer.Option(help="Models with several inputs: the image channel feeding each, "
                                               "e.g. 'input0=0,input1=1' (default: by the inputs' numbered names, "
                                               "when they say it).")]
OutputChannelOpt = Annotated[str | None, typer.Option(help="Output to score: a channel name (e.g. nuclei), an output "
                                                      "tensor id, TENSOR:CHANNEL or a channel index; default: "
                                                      "chosen from the output's names.")]
DeviceOpt = Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda:0.")]
BudgetOpt = Annotated[str, typer.Option(help="Images to score, in a seeded random order: all; auto (stop once the "
                                        "top model's lead over the runner-up is outside its bootstrap interval; "
                                        "every model stays loaded); or a number N.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for perturbations; the same seed reproduces scores exactly.")]
LayerOpt = Annotated[str | None, typer.Option(help="Layer to perturb for grey-box estimators (module name); "
                                              "default: the bottleneck, found automatically.")]
WeightsOpt = Annotated[str | None, typer.Option("--weight-format", help="Weights format to run (e.g. "
                                                "torchscript, onnx); default: grey-box estimators take the state "
                                                "dict if its code may run, else onnx, then torchscript; black-box "
                                                "ones bioimageio's priority order.")]
RepeatsOpt = Annotated[int, typer.Option(help="Perturbed runs per image (their consistencies are averaged).")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Rank only the models whose RDF has this tag, e.g. "
                                            "'nuclei' (CTE compares models made for the same task).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
ReportImagesOpt = Annotated[int, typer.Option("--report-images", min=0, help="Images shown with overlays in the "
                                              "HTML report (0: none, no model is re-run).")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="Run Python code shipped inside model packages "
                                            "(architecture files, custom processing). Off by default: only "
                                            "architectures from trusted installed libraries run, other models "
                                            "use their torchscript/onnx weights or are skipped with the reason.")]
TrustLibraryOpt = Annotated[list[str] | None, typer.Option("--trust-library", help="Also trust architectures "
                                                           "imported from this installed library (import prefix, "
                                                           "e.g. mylab_nets; repeat the option).")]
MaxPixelsOpt = Annotated[int, typer.Option(help="Largest image read, in pixel values (all planes and channels), "
                                           "checked from the file's header before decoding.", min=1)]
MaxEntryOpt = Annotated[int, typer.Option(help="Largest unpacked file inside a package zip, in bytes; a package "
                                          "with a larger one fails.", min=1)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-images", help="Rank on the readable images and list the "
                                          "unreadable ones (in the JSON too), instead of stopping.")]
TimeLimitOpt = Annotated[float, typer.Option("--time-limit", min=0, help="Seconds one model may take on one set of "
                                             "images; a model still running then is stopped, recorded as failed "
                                             "('timed out') and the others go on (0: no limit).")]
CalibrationOpt = Annotated[str | None, typer.Option("--calibration", help="Calibration file for each model's "
                                                    "predicted Dice (default: the shipped one; 'bioimage-cte "
                                                    "calibrate' writes one).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit with code 4 when some models could not be ranked "
                                         "or some images were skipped (default: 0 if any model ranked).")]


def rank_options(**values: Any) -> RankOptions:
    """The command line's values as the library's one options object (a bad value is a usage error).

    Only the values given are set; every other option keeps :class:`RankOptions`' default.
    """
    if "trust_library" in values:
        values["trusted_libraries"] = tuple(values.pop("trust_library") or ())
    # typer hands choices over as enum members; the library takes their plain values
    plain = {k: str(v) if isinstance(v, StrEnum) else v for k, v in values.items()}
    try:
        return RankOptions(**plain)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


# The options every ranking command shares, declared once: with_rank_options adds them to a command's signature
# (typer reads the signature) and hands the command one RankOptions.
RANK_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("task", TaskOpt, Task.semantic), ("consistency", ConsistencyOpt, None),
    ("perturbation", PerturbationOpt, Perturbation.gaussian), ("strength", StrengthOpt, None),
    ("repeats", RepeatsOpt, 1), ("axes", AxesOpt, None), ("channels", ChannelsOpt, None),
    ("inputs", InputsOpt, None),
    ("output_channel", OutputChannelOpt, None), ("device", DeviceOpt, "cpu"), ("seed", SeedOpt, 0),
    ("layer", LayerOpt, None), ("weight_format", WeightsOpt, None), ("tag", TagOpt, None),
    ("trust_code", TrustCodeOpt, False), ("trust_library", TrustLibraryOpt, None),
    ("max_pixels", MaxPixelsOpt, RankOptions().max_pixels),
    ("max_entry_bytes", MaxEntryOpt, RankOptions().max_entry_bytes), ("skip_bad_images", SkipBadOpt, False),
    ("budget", BudgetOpt, "all"), ("time_limit", TimeLimitOpt, RankOptions().time_limit),
    ("calibration", CalibrationOpt, None),
)


def with_rank_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with every option of :data:`RANK_OPTIONS` added to its signature, called with one
    ``options=RankOptions(...)`` made of them."""
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
              for name, annotation, default in RANK_OPTIONS]
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        chosen = {name: kwargs.pop(name) for name, _, _ in RANK_OPTIONS}
        if "estimator" in kwargs:  # evaluate compares several and has its own --estimator
            chosen["estimator"] = kwargs["estimator"]
        command(**kwargs, options=rank_options(**chosen))

    # keyword-only parameters may not come before positional ones: the commands' own come first
    wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper
