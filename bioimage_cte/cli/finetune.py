"""``bioimage-cte finetune``: fine-tune one model on a few labelled images and write it as a new package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bioimage_cte.cli.commands import _fail, _quiet_libraries, app, console
from bioimage_cte.cli.options import (
    AxesOpt,
    BatchSizeOpt,
    DebugOpt,
    ImagesOpt,
    LabelsOpt,
    LearningRateOpt,
    PatchOpt,
    SeedOpt,
    StepsOpt,
    TrustCodeOpt,
    TrustLibraryOpt,
    rank_options,
)
from bioimage_cte.cli.output import tell_written

__all__ = ["finetune"]


@app.command()
def finetune(
    model: Annotated[str, typer.Argument(help="The package to fine-tune (.zip, folder or rdf.yaml), e.g. the "
                                         "first model of a ranking.", show_default=False)],
    images: ImagesOpt,
    labels: LabelsOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="The fine-tuned package (.zip) to write; an existing "
                                         "file is kept as <name>.bak first.", show_default=False)],
    steps: StepsOpt = 200,
    n_test: Annotated[int, typer.Option(min=1, help="Labelled images held out to measure the Dice before and after "
                                        "(seeded choice); the model trains on the others.")] = 1,
    patch: PatchOpt = 96,
    batch_size: BatchSizeOpt = 4,
    learning_rate: LearningRateOpt = 1e-3,
    axes: AxesOpt = None,
    seed: SeedOpt = 0,
    trust_code: TrustCodeOpt = False,
    trust_library: TrustLibraryOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune one model on your labelled images (what a ranking advises when even the best model's predicted
    Dice is low) and write it as a new bioimageio package."""
    _quiet_libraries()
    options = rank_options(seed=seed, axes=axes, trust_code=trust_code, trust_library=trust_library)
    try:
        from bioimage_cte.outputs.destinations import check_destination
        from bioimage_cte.studies.finetune import FinetuneConfig
        from bioimage_cte.studies.finetune_package import finetune_package

        check_destination(output, option="--output")
        config = FinetuneConfig(steps=steps, batch_size=batch_size, patch=patch, seed=seed,
                                learning_rate=learning_rate, eval_every=max(1, steps // 8))
        with console.status(f"fine-tuning {model} for {steps} steps"):
            run = finetune_package(model, images, labels, output, options, config=config, n_test=n_test)
    except Exception as e:
        _fail(e, debug)
    console.print(f"{run['model']}: Dice {run['zero_shot_dice']:.3f} -> {run['final_dice']:.3f} on the held-out "
                  f"{', '.join(run['test_images'])} after {steps} steps on {len(run['train_images'])} labelled "
                  "images", highlight=False, soft_wrap=True)
    tell_written(console, "fine-tuned package", Path(run["package"]))
