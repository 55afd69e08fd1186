"""Progress of a long command: a rich bar on a terminal, plain periodic lines in a log.

``bioimage-cte rank ... > log`` (or a cron job, or CI) has no terminal, so a bar would print nothing for
minutes. There, :func:`progress_display` writes one line when a stage or a model starts and then at most one
line every ``interval`` seconds (``BIOIMAGE_CTE_PROGRESS_SECONDS``, default 10), e.g.::

    [0:00:12] loading model 2/8 nuclei-small-bright (10/80 images done)
    [0:00:22] nuclei-small-bright: image 4/10, 14/80 done

With a budget every model stays loaded and each image is scored by all of them in turn
(``image 3/10 for each of 8 models, 24/80 done``); a study over several targets counts the models per target
(``loading model 2/8 nuclei-small-bright on target 3/6 dsb2018 (...)``).

The callbacks are those of :class:`bioimage_cte.run.pipeline.Progress`, so every command that takes one (rank,
evaluate, report, transfer-matrix, the zoo flow's CLI) reports progress the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["PlainProgress", "progress_display", "progress_interval"]

_DEFAULT_INTERVAL = 10.0
#: a stage before scoring gets its own line when it took at least this long
QUIET_STAGE_SECONDS = 2.0


def progress_interval() -> float:
    """Seconds between two plain progress lines (``BIOIMAGE_CTE_PROGRESS_SECONDS``, default 10)."""
    text = os.environ.get("BIOIMAGE_CTE_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(text)) if text else _DEFAULT_INTERVAL
    except ValueError:
        return _DEFAULT_INTERVAL


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class PlainProgress:
    """Plain progress lines for a log: stage and model starts always, image counts every ``interval`` seconds."""

    label: str
    write: Callable[[str], None]
    interval: float = field(default_factory=progress_interval)
    total: int | None = None
    n_models: int | None = None
    n_images: int | None = None
    done: int = 0
    model_name: str = ""
    model_index: int = 0
    model_done: int = 0
    _started: float = field(default_factory=time.monotonic)
    _last: float = float("-inf")
    _pending: tuple[str, float] | None = None
    #: with a budget: the image every model is scoring now, of at most how many
    _round: tuple[int, int] | None = None
    #: in a study over targets: the target's name, its number and how many there are
    _target: tuple[str, int, int] | None = None

    def _line(self, text: str, at: float | None = None) -> None:
        self._last = time.monotonic()
        self.write(f"[{_clock((self._last if at is None else at) - self._started)}] {text}")

    def _flush(self) -> None:
        """Print the quiet stage that just ended, if it took long enough to be worth a line."""
        if self._pending is not None:
            text, since = self._pending
            self._pending = None
            took = time.monotonic() - since
            if took >= QUIET_STAGE_SECONDS:
                self._line(f"{text} (took {took:.0f} s)", at=since)

    def _of_total(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else str(self.done)

    def stage(self, text: str) -> None:
        self._flush()
        self._line(text)

    def quiet_stage(self, text: str) -> None:
        """A stage before scoring (finding models, checking images): printed only once it has taken a while, so a
        bad input found at once stays a one-line error."""
        self._flush()
        self._pending = (text, time.monotonic())

    def start(self, total: int) -> None:
        self._flush()
        self.total = total
        self._line(f"{self.label}: {total} model x image predictions to make")

    def plan(self, n_models: int, n_images: int) -> None:
        self.n_models, self.n_images = n_models, n_images

    def target(self, name: str, number: int, count: int) -> None:
        """A new target of a study: models are counted again from 1."""
        self._flush()
        self._target, self.model_index = (name, number, count), 0
        self._line(f"target {number}/{count} {name}")

    def model(self, name: str) -> None:
        self._flush()
        self.model_index += 1
        self.model_name, self.model_done = name, 0
        of = f"/{self.n_models}" if self.n_models else ""
        where = f" on target {self._target[1]}/{self._target[2]} {self._target[0]}" if self._target else ""
        self._line(f"loading model {self.model_index}{of} {name}{where} ({self._of_total()} images done)")

    def round(self, number: int, count: int) -> None:
        """With a budget: image ``number`` of at most ``count`` starts, scored by every loaded model in turn."""
        self._flush()
        self._round, self.model_name = (number, count), ""

    def finish(self) -> None:
        """A closing count when the run made fewer predictions than planned (a model failed, or a budget stopped
        early), so a log never ends on a count short of its total without saying why."""
        self._flush()
        if self.total is None or self.done >= self.total:
            return
        self._line(f"{self.done}/{self.total} done: the others were not made (a model failed, or a budget stopped "
                   "early; see below)")

    def image(self) -> None:
        self.done += 1
        self.model_done += 1
        finished = self.total is not None and self.done >= self.total
        if finished or time.monotonic() - self._last >= self.interval:
            if self._round is not None:
                each = f" for each of {self.n_models} models" if self.n_models else ""
                self._line(f"image {self._round[0]}/{self._round[1]}{each}, {self._of_total()} done")
                return
            per_model = f"/{self.n_images}" if self.n_images else ""
            who = f"{self.model_name}: " if self.model_name else ""
            self._line(f"{who}image {self.model_done}{per_model}, {self._of_total()} done")


@contextlib.contextmanager
def progress_display(label: str, console: Console, *, warn: Callable[[str], None] | None = None) -> Iterator[Any]:
    """A :class:`bioimage_cte.run.pipeline.Progress` that shows a rich bar on a terminal and plain lines otherwise.

    Parameters
    ----------
    label : str
        What the run does, e.g. ``"scoring"``.
    console : rich.console.Console
        Where progress goes (the CLI's stderr console).
    warn : callable, optional
        Prints a warning about the input; default: a yellow ``warning:`` line on ``console``.
    """
    from bioimage_cte.run.pipeline import Progress

    warning = warn or (lambda text: console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False,
                                                  soft_wrap=True))
    if not console.is_terminal:
        plain = PlainProgress(label, lambda text: console.print(escape(text), highlight=False, soft_wrap=True))
        yield Progress(warning=warning, start=plain.start, plan=plain.plan, stage=plain.quiet_stage,
                       model=lambda source: plain.model(source.name), image=plain.image, round=plain.round,
                       target=plain.target)
        plain.finish()
        return

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)
        current = {"name": ""}

        def image() -> None:
            # the first image of a model ends its loading stage
            bar.update(task, advance=1, description=f"{label} {current['name']}")

        def model(source: Any) -> None:
            current["name"] = source.name
            bar.update(task, description=f"loading {source.name}")

        def round_(number: int, count: int) -> None:
            current["name"] = f"image {number}/{count}, every model"

        def target(name: str, number: int, count: int) -> None:
            current["target"] = f" on target {number}/{count} {name}"

        def model_on_target(source: Any) -> None:
            model(source)
            bar.update(task, description=f"loading {source.name}{current.get('target', '')}")

        yield Progress(warning=warning, start=lambda total: bar.update(task, total=total),
                       stage=lambda text: bar.update(task, description=text), model=model_on_target, image=image,
                       round=round_, target=target)
