"""``bioimage-cte calibrate``: refit the predicted-Dice calibration from a transfer matrix and measured signals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bioimage_cte.cli.commands import app, console, err_console
from bioimage_cte.cli.output import tell_written

__all__ = ["calibrate"]


@app.command()
def calibrate(
    signals: Annotated[Path, typer.Option("--signals", help="CSV of label-free signals per model and target "
                                          "(target,model,task,tta,consensus,foreground).")] = Path(
        "resources/calibration/signals.csv"),
    transfer_matrix: Annotated[list[Path] | None, typer.Option("--transfer-matrix", help="Transfer matrix CSV(s) "
                                                               "with each model's true Dice per target (repeat "
                                                               "the option).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration JSON to write.")] = Path(
        "resources/calibration/predicted_dice.json"),
    coverage: Annotated[float, typer.Option(min=0.5, max=0.99, help="Coverage of the conformal intervals.")] = 0.9,
) -> None:
    """Refit each ranked model's predicted Dice: least squares on the signals, intervals by split conformal
    prediction on leave-one-target-out residuals."""
    from bioimage_cte.base.errors import BioimageCteError
    from bioimage_cte.studies.calibration import calibrate as fit

    matrices = transfer_matrix or [Path("resources/zoo/transfer_matrix.csv"),
                                   Path("resources/calibration/transfer_matrix_held_out.csv")]
    try:
        calibration = fit(signals, matrices, output, coverage=coverage)
    except BioimageCteError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for f in calibration.fits:
        v = f.validation
        console.print(f"{'+'.join(f.features)}: leave-one-target-out MAE {v['mae']:.3f} (top-ranked "
                      f"{v['mae_top']:.3f}; trivial {v['trivial_mae']:.3f}), {calibration.coverage:.0%} interval "
                      f"+-{f.half_width:.3f} covered {v['coverage']:.1%} ({v['n']} pairs, {v['targets']} targets)",
                      highlight=False, soft_wrap=True)
    tell_written(console, "calibration", output)
