"""The transfer matrix: true performance of every zoo model on every labelled target.

This is the ground truth a ranking is judged against. A target is a folder with ``images/``
and ``labels/`` (same file stems). For every model and target the CSV holds the mean over images
of foreground Dice (threshold 0.5), instance F1 at IoU 0.5 and mean AP over IoU 0.5:0.05:0.95
(instances by seeded watershed for models with a boundary channel, connected components otherwise).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import InvalidImageError
from bioimage_cte.cte.metrics import METRICS
from bioimage_cte.cte.outcomes import ModelFailure
from bioimage_cte.demozoo.formats import trained_only
from bioimage_cte.predict.images import list_images, load_labels
from bioimage_cte.run.evaluation import true_performance
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.scoring import rank_models
from bioimage_cte.zoo.sources import find_models


@dataclass(frozen=True)
class TransferRow:
    """One cell of the transfer matrix."""

    model: str
    target: str
    metric: str
    value: float


def find_targets(data: Path) -> dict[str, Path]:
    """Labelled targets under ``data``: every subfolder holding ``images/`` and ``labels/``."""
    targets = {p.name: p for p in sorted(Path(data).iterdir()) if (p / "images").is_dir() and (p / "labels").is_dir()}
    if not targets:
        raise InvalidImageError(f"no labelled targets in {data}: expected subfolders with images/ and labels/")
    return targets


def compute_transfer_matrix(
    zoo: Path | Sequence[str],
    data: Path,
    *,
    options: RankOptions | None = None,
    progress: Any = None,
    on_rows: Callable[[Sequence[TransferRow]], None] | None = None,
) -> tuple[list[TransferRow], list[ModelFailure]]:
    """Evaluate every model in ``zoo`` on every labelled target in ``data`` (``options``: device, trust, axes).

    ``progress`` (a :class:`bioimage_cte.run.pipeline.Progress`) hears the total of model x image predictions first,
    then each target (``target``, with the models and images it plans), each model on it and each image. Each model's
    rows on a target go to ``on_rows`` as soon as they are computed, so that a run stopped halfway keeps them.
    """
    options = options or RankOptions()
    sources = trained_only(find_models([zoo] if isinstance(zoo, Path) else zoo))  # each network once
    targets = {name: (folder, list_images(folder / "images")) for name, folder in find_targets(data).items()}
    hook = {name: getattr(progress, name, None) for name in ("start", "plan", "target", "model", "image")}
    if hook["start"] is not None:
        hook["start"](len(sources) * sum(len(paths) for _, paths in targets.values()))
    rows: list[TransferRow] = []
    failures: list[ModelFailure] = []
    for number, (target, (folder, paths)) in enumerate(targets.items(), start=1):
        if hook["plan"] is not None:
            hook["plan"](len(sources), len(paths))
        if hook["target"] is not None:
            hook["target"](target, number, len(targets))
        labels = load_labels(paths, folder / "labels")
        for source in sources:  # one model at a time, so that its rows are written before the next one loads
            results, failed = rank_models([source], paths, [], options, labels=labels, on_image=hook["image"],
                                          on_model=hook["model"])
            failures.extend(failed)
            new = [TransferRow(model, target, m, metrics[m]) for model, metrics in true_performance(results).items()
                   for m in METRICS if m in metrics]
            rows.extend(new)
            if on_rows is not None:
                on_rows(new)
    return rows, failures


class TransferMatrixWriter:
    """Writes transfer-matrix rows to a CSV as they come (header first), flushed after each batch.

    A run that is stopped keeps every row written so far; a complete run's file equals
    :func:`write_transfer_matrix`'s.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["model", "target", "metric", "value"])
        self._file.flush()
        self.rows = 0

    def __call__(self, rows: Sequence[TransferRow]) -> None:
        self._writer.writerows([r.model, r.target, r.metric, f"{r.value:.6f}"] for r in rows)
        self._file.flush()
        self.rows += len(rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TransferMatrixWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_transfer_matrix(rows: Sequence[TransferRow], path: Path) -> None:
    """Write rows as CSV (model, target, metric, value), atomically."""
    from bioimage_cte.base.fileutils import write_atomic

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["model", "target", "metric", "value"])
    writer.writerows([r.model, r.target, r.metric, f"{r.value:.6f}"] for r in rows)
    write_atomic(Path(path), text.getvalue().encode())


def read_transfer_matrix(path: Path) -> list[TransferRow]:
    """Read a transfer-matrix CSV."""
    with Path(path).open(newline="") as f:
        return [TransferRow(r["model"], r["target"], r["metric"], float(r["value"])) for r in csv.DictReader(f)]


def summarize(rows: Sequence[TransferRow], *, metric: str = "dice") -> dict[str, dict[str, float | str]]:
    """Best, median and worst model per target for one metric."""
    out: dict[str, dict[str, float | str]] = {}
    for target in dict.fromkeys(r.target for r in rows):
        cells = sorted((r.value, r.model) for r in rows if r.target == target and r.metric == metric)
        values = [v for v, _ in cells]
        out[target] = {"best": cells[-1][0], "best_model": cells[-1][1], "median": float(np.median(values)),
                       "worst": cells[0][0], "worst_model": cells[0][1]}
    return out
