"""What an unattended zoo run needs around the scoring: a fast check of the Dask address, readable run names,
the final state's message, a notification when models failed, and what a run returns (:class:`ZooRunSummary`).

Nothing here imports prefect or runs a model; :mod:`bioimage_cte_flows.zoo_ranking` calls these.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bioimage_cte.run.jobs import UnfitPair

__all__ = ["FailedJob", "ZooRunSummary", "check_dask_address", "final_message", "notify_webhook", "run_name",
           "summary_markdown"]


@dataclass(frozen=True)
class FailedJob:
    """A model that could not be scored on a target, after its retries."""

    model: str
    source: str
    target: str
    reason: str
    stage: str = "predict"


@dataclass(frozen=True)
class ZooRunSummary:
    """What one run did.

    Attributes
    ----------
    rankings : dict
        Target name -> path of its ranking JSON.
    scored, cached : int
        Model x target pairs scored in this run, and taken from the store.
    model_loads : int
        How many times a model was loaded (one per model that fits a target, with ``load_once``; more after a pair
        that timed out or crashed its process).
    failed : tuple of FailedJob
        Pairs that failed after their retries (recorded in the store as failed).
    unfit : tuple of UnfitPair
        Pairs left out before scoring because the model cannot run on the target (3D model on 2D images, channel
        count, another task with ``match_task``), each with its reason; also in each ranking's ``not_fitting``.
    annotated : dict
        Target name -> packages annotated with its ranking (empty unless ``annotate``).
    problems : dict
        What went wrong after scoring (write-back, reports), by target name or ``"reports"``.
    reports : str or None
        Folder of the zoo reports.
    leaderboard : str or None
        The leaderboard page of the run (every model on every target), beside ``targets/<target>.html``.
    store : str
        The results database used.
    message, ranked
        The flow's final state message, and False when no target got a ranked model (the run then ends Failed).
    """

    rankings: dict[str, str]
    scored: int
    cached: int
    failed: tuple[FailedJob, ...]
    unfit: tuple[UnfitPair, ...] = ()
    annotated: dict[str, list[str]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    reports: str | None = None
    leaderboard: str | None = None
    store: str = ""
    model_loads: int = 0
    #: the final state's message (what failed, what was ranked) and whether anything was ranked at all
    message: str = ""
    ranked: bool = True


def check_dask_address(address: str, *, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at a Dask scheduler address.

    Without this check Dask retries for about a minute and then prints a long traceback.

    Raises
    ------
    ConnectionError
        Nothing accepts a TCP connection at ``address`` within ``timeout`` seconds.

    Examples
    --------
    >>> check_dask_address("inproc://whatever")  # not a network address: nothing to check
    """
    parsed = urlparse(address)
    if parsed.scheme not in ("tcp", "tls", "ws", "wss") or not parsed.hostname:
        return
    port = parsed.port or 8786
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} ({reason}); start it ('dask "
                              "scheduler') or fix --dask-address (e.g. tcp://127.0.0.1:8786, or 'local')") from None


def run_name(zoo: str, targets: Sequence[str], *, limit: int = 80) -> str:
    """A flow run's name from its zoo and targets, e.g. ``"zoo on dsb2018, nuclei-tiny"``.

    Examples
    --------
    >>> run_name("/data/zoo", ["/data/t/dsb2018", "/data/t/em"])
    'zoo on dsb2018, em'
    >>> len(run_name("zoo", [f"/t/target{i}" for i in range(40)])) <= 80
    True
    """
    def short(path: str) -> str:
        text = path.rstrip("/")
        return Path(urlparse(text).path if "://" in text else text).name or text

    names = [short(t) for t in targets]
    text = f"{short(zoo)} on {', '.join(names)}"
    if len(text) > limit:
        text = f"{short(zoo)} on {names[0]} and {len(names) - 1} more targets"
    return text[:limit]


def final_message(*, scored: int, cached: int, failed: int, ranked: dict[str, int], unfit: int = 0) -> str:
    """The final state's message: what was scored, reused, failed, left out as not fitting and ranked.

    Examples
    --------
    >>> final_message(scored=3, cached=1, failed=1, ranked={"dsb": 3})
    '1 of 5 model x target pairs failed; 3 scored, 1 from the store; ranked dsb: 3 models'
    >>> final_message(scored=2, cached=0, failed=0, ranked={"dsb": 2}, unfit=4)
    'all 2 model x target pairs ok; 2 scored, 0 from the store; 4 pairs do not fit; ranked dsb: 2 models'
    """
    total = scored + cached + failed
    head = f"{failed} of {total} model x target pairs failed" if failed else f"all {total} model x target pairs ok"
    ranked_text = ", ".join(f"{t}: {n} models" for t, n in ranked.items()) or "no target"
    left_out = f"; {unfit} pairs do not fit" if unfit else ""
    return f"{head}; {scored} scored, {cached} from the store{left_out}; ranked {ranked_text}"


def notify_webhook(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> str | None:
    """POST ``payload`` as JSON to ``url`` (e.g. a Slack or Teams incoming webhook); the error as text, or None.

    A notification that cannot be sent must not fail the run it reports on, so errors are returned, not raised.
    Slack and Teams show the ``text`` field.
    """
    body = json.dumps(payload, allow_nan=False, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  (the user's own URL)
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"could not notify {url}: {e}"
    return None


def summary_markdown(summary: Any) -> str:
    """The run's summary artifact (a ``ZooRunSummary``): counts, ranking paths, failed and not fitting pairs."""
    lines = [f"**{summary.scored}** scored, **{summary.cached}** from the store ({summary.store}), "
             f"**{len(summary.failed)}** failed, **{len(summary.unfit)}** do not fit.", ""]
    lines += [f"- {target}: `{path}`" for target, path in summary.rankings.items()]
    if summary.failed:
        lines += ["", "| model | target | reason |", "|---|---|---|"]
        lines += [f"| {f.model} | {f.target} | {f.reason.replace('|', '/')} |" for f in summary.failed]
    if summary.unfit:
        lines += ["", "Not fitting (left out before scoring):", "", "| model | target | reason |", "|---|---|---|"]
        lines += [f"| {u.model} | {u.target} | {u.reason.replace('|', '/')} |" for u in summary.unfit]
    if getattr(summary, "leaderboard", None):
        lines += ["", f"Leaderboard (every model on every target): `{summary.leaderboard}`"]
    lines += [f"\n{where}: {problem}" for where, problem in summary.problems.items()]
    return "\n".join(lines)
