"""Refit the predicted-Dice calibration from a transfer matrix and the label-free signals measured beside it.

The transfer matrix (``bioimage-cte transfer-matrix``, rows ``model,target,metric,value``) gives each model's true
Dice on each labelled target; the signals file (rows ``target,model,task,tta,consensus,foreground``, the medians a
ranking run computes, :func:`bioimage_cte.run.calibrated.model_signals`) gives what a run sees without labels.
:func:`calibrate` joins them and fits :func:`bioimage_cte.cte.calibration.fit_calibration`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.version import __version__
from bioimage_cte.cte.calibration import Calibration, CalibrationRow, fit_calibration
from bioimage_cte.studies.transfer import read_transfer_matrix

__all__ = ["SIGNAL_COLUMNS", "calibrate", "calibration_rows", "read_signals", "write_signals"]

#: Columns of a signals file.
SIGNAL_COLUMNS = ("target", "model", "task", "tta", "consensus", "foreground")


def _number(value: str) -> float:
    return float(value) if value not in ("", "nan", "None") else math.nan


def read_signals(path: Path) -> list[dict[str, object]]:
    """The rows of a signals CSV; one-line error naming the file and the missing column."""
    try:
        with Path(path).open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SIGNAL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BioimageCteError(f"{path} lacks the column(s) {', '.join(missing)}; a signals file has "
                                       f"{','.join(SIGNAL_COLUMNS)} (benchmarks/predicted_dice.py writes one)")
            return [{k: (row[k] if k in ("target", "model", "task") else _number(row[k])) for k in SIGNAL_COLUMNS}
                    for row in reader]
    except OSError as e:
        raise BioimageCteError(f"cannot read signals {path}: {e.strerror or e}") from e


def write_signals(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Write signal rows (dicts with :data:`SIGNAL_COLUMNS`) as CSV, 6 decimals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SIGNAL_COLUMNS)
        for r in rows:
            writer.writerow([r[c] if c in ("target", "model", "task") else
                             ("" if not math.isfinite(float(r[c])) else f"{float(r[c]):.6f}") for c in SIGNAL_COLUMNS])


def calibration_rows(signals: Sequence[dict[str, object]], matrices: Sequence[Path]) -> list[CalibrationRow]:
    """Signals joined with the true Dice of the transfer matrices (pairs without a Dice are left out)."""
    dice: dict[tuple[str, str], float] = {}
    for m in matrices:
        dice.update({(r.model, r.target): r.value for r in read_transfer_matrix(Path(m)) if r.metric == "dice"})
    rows = []
    for s in signals:
        key = (str(s["model"]), str(s["target"]))
        if key in dice:
            rows.append(CalibrationRow(key[1], key[0], str(s["task"]),
                                       {k: float(s[k]) for k in ("tta", "consensus", "foreground")}, dice[key]))
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibrate(signals: Path, matrices: Sequence[Path], output: Path, *, coverage: float = 0.9) -> Calibration:
    """Fit the calibration on ``signals`` x ``matrices`` and write it to ``output`` (JSON, with its provenance).

    Raises
    ------
    BioimageCteError
        Fewer than 3 targets have both signals and a true Dice.
    """
    rows = calibration_rows(read_signals(signals), matrices)
    if len({r.target for r in rows}) < 3:
        raise BioimageCteError(f"{signals} and {', '.join(map(str, matrices))} share fewer than 3 targets with both "
                               "signals and a true Dice: nothing to validate a calibration on")
    files = [Path(signals), *map(Path, matrices)]
    info = {"files": [{"path": p.name, "sha256": _sha256(p)} for p in files], "metric": "dice (foreground, 0.5)",
            "bioimage_cte_version": __version__, "dimensions": "2D"}
    try:
        calibration = fit_calibration(rows, coverage=coverage, fitted_on=info)
    except ValueError as e:
        raise BioimageCteError(f"cannot fit a calibration on {signals}: {e}") from e
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(calibration.to_json_dict(), indent=1) + "\n")
    return calibration
