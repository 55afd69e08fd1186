"""Stop waiting for a model that hangs: a time limit on one piece of work, for unattended runs.

A weekly zoo run must not sit for days behind one model whose forward pass never returns. Models run in a child
process that is killed at the limit (:mod:`bioimage_cte.run.isolated`); where no child process may be started
(a daemonic Dask worker) :func:`run_with_deadline`
runs the work in a helper thread and waits at most ``seconds``. When the time is up it raises
:class:`~bioimage_cte.base.errors.ModelTimeoutError` at once, so the caller records the model as failed and moves on,
and it asks the helper thread to stop: the thread gets an exception the next time it runs Python code (between
two torch operations, or when a ``time.sleep`` ends). A thread stuck inside one C call cannot be stopped from
outside; it is left running in the background (it holds no lock of the caller) and ends with the process.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

from bioimage_cte.base.errors import ModelTimeoutError

__all__ = ["StoppedByDeadline", "run_with_deadline", "timeout_message"]

T = TypeVar("T")


class StoppedByDeadline(BaseException):
    """Raised inside the abandoned helper thread; a BaseException, so ``except Exception`` handlers (which would
    record a failure or a result for work nobody waits for any more) do not catch it."""


def _stop(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(StoppedByDeadline))


def timeout_message(what: str, seconds: float) -> str:
    """The one-line reason of a model stopped at its time limit."""
    return (f"{what}: timed out after {seconds:g} s and was stopped; raise the time limit (--time-limit) if the "
            "model is only slow")


def run_with_deadline(work: Callable[[], T], seconds: float | None, *, what: str) -> T:
    """``work()``, or :class:`~bioimage_cte.base.errors.ModelTimeoutError` when it takes longer than ``seconds``.

    Parameters
    ----------
    work : callable
        The work, without arguments; its exception is raised again here.
    seconds : float or None
        Time limit; None or 0 runs ``work`` in this thread without a limit.
    what : str
        Names the work in the error, e.g. ``"nuclei-small on dsb2018"``.

    Examples
    --------
    >>> run_with_deadline(lambda: 2 + 2, 5, what="sum")
    4
    >>> import time
    >>> run_with_deadline(lambda: [time.sleep(0.05) for _ in range(100)], 0.2, what="a slow loop")
    Traceback (most recent call last):
    ...
    bioimage_cte.base.errors.ModelTimeoutError: a slow loop: timed out after 0.2 s and was stopped; ...
    """
    if not seconds:
        return work()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except StoppedByDeadline:
            pass
        except BaseException as e:  # handed to the waiting thread, which raises it
            box["error"] = e

    thread = threading.Thread(target=target, name=f"deadline: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _stop(thread)
        raise ModelTimeoutError(timeout_message(what, seconds))
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
