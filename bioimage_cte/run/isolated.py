"""Scoring one model in a child process that a time limit can really stop.

A model whose forward pass never returns cannot be stopped from inside its own process: a thread stuck in one C
call (the TorchScript interpreter, an onnxruntime session) ignores every request, and an abandoned thread aborts the
interpreter at exit. So with a time limit each model is scored in a child process: when the limit is reached the
child is killed (SIGKILL), nothing of it is left behind, and the caller records the model as timed out and goes on.

The children are forked from one server process that has imported torch and bioimageio.core once
(``multiprocessing``'s ``forkserver``), so each model costs a fork, not an interpreter start; the server holds no
model and no thread of the caller. A child sends a tick per scored image (the caller's progress), then its
:class:`~bioimage_cte.cte.outcomes.ModelResult`, or the exception that stopped it, which the caller raises again:
failures are classified exactly as in-process ones.

:class:`IsolatedWorker` is the same child kept for several calls: a zoo run sends it every target of one model, and
the work keeps the model loaded between calls (:func:`bioimage_cte.run.scoring.score_model_kept`). Each call has
its own time limit; a call that reaches it kills the child, and the next call starts a new one.

A daemonic process (a Dask worker, say) may not have children: there the model runs in-process, and a time limit
falls back to :func:`bioimage_cte.predict.deadline.run_with_deadline`, which stops Python code but not a stuck C call.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import pickle
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any, TypeVar

from bioimage_cte.base.errors import ModelRunError, ModelTimeoutError
from bioimage_cte.predict.deadline import run_with_deadline, timeout_message

__all__ = ["IsolatedWorker", "can_isolate", "run_isolated"]

T = TypeVar("T")

#: imported once by the server the children are forked from
_PRELOAD = ["torch", "bioimageio.core", "bioimage_cte.run.scoring", "bioimage_cte.predict.factory",
            "bioimage_cte.predict.blackbox", "bioimage_cte.predict.torch_greybox"]
_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
        atexit.register(_stop_server)
    return _CONTEXT


def _stop_server() -> None:
    # the server, and multiprocessing's resource tracker, would end only after this process and linger until init
    # reaps them: stop and reap both now, so nothing of the run outlives it
    from multiprocessing import forkserver, resource_tracker

    for stop in (forkserver._forkserver._stop, resource_tracker._resource_tracker._stop):
        with contextlib.suppress(Exception):
            stop()


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_main():
    """Start children without the caller's main script: multiprocessing would run it again in every child (the
    ``if __name__ == "__main__"`` guard a library user need not know about), and the work needs nothing of it."""
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def can_isolate() -> bool:
    """Whether this process may start child processes (a daemonic one may not)."""
    return not multiprocessing.current_process().daemon


def _child(conn, work, args, kwargs, threads, *, close: bool = True) -> None:
    """In the child: run the work, sending a tick per image, then the result or the exception."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        message = ("result", work(*args, **kwargs, on_image=lambda: conn.send(("image", None))))
    except BaseException as e:  # raised again in the caller, where it is classified as in-process
        try:
            pickle.dumps(e)
            message = ("error", e)
        except Exception:  # an exception that does not survive pickling is sent as its words
            message = ("error", ModelRunError(f"{type(e).__name__}: {e}"))
    conn.send(message)
    if close:
        conn.close()


def _serve(conn, threads) -> None:
    """In a kept child: run one call per message until the caller closes the pipe, sending ticks and answers."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            work, args, kwargs = conn.recv()
        except EOFError:  # the caller is done (or gone)
            break
        _child(conn, work, args, kwargs, None, close=False)
    conn.close()


def _threads() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def run_isolated(work: Callable[..., T], /, *args: Any, seconds: float, what: str, location: str,
                 on_image: Callable[[], None] | None = None, **kwargs: Any) -> T:
    """``work(*args, **kwargs, on_image=...)`` in a child process killed after ``seconds``.

    Parameters
    ----------
    work : callable
        A module-level function (it is handed to the child by name), taking ``on_image``: e.g.
        :func:`bioimage_cte.run.scoring.score_model`. Its arguments and result must pickle.
    seconds : float
        Time limit for the whole call (model loading included); 0 runs ``work`` in this process without a limit.
    what : str
        Names the work in the timeout message, e.g. ``"nuclei-small on dsb2018"``.
    location : str
        The package, named when the child ends without a result.
    on_image : callable, optional
        Called here once per image the child has scored.

    Raises
    ------
    ModelTimeoutError
        The call took longer than ``seconds``; its process was killed.
    ModelRunError
        The child ended without a result (killed from outside, out of memory, a crash in native code).
    Exception
        What ``work`` raised in the child, raised again here.
    """
    if not seconds:
        return work(*args, **kwargs, on_image=on_image)
    if not can_isolate():
        return run_with_deadline(lambda: work(*args, **kwargs, on_image=on_image), seconds, what=what)
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, name=f"bioimage-cte: {what}", daemon=True,
                        args=(send, work, args, kwargs, _threads()))
    with _without_main():
        child.start()
    send.close()  # the child holds the only sending end: its death ends the pipe
    try:
        return _wait(child, receive, seconds=seconds, on_image=on_image, what=what, location=location)
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()


def _wait(child, receive, *, seconds: float, on_image: Callable[[], None] | None, what: str, location: str,
          answered: list[bool] | None = None) -> Any:
    """The child's answer within ``seconds`` (``answered`` gets True once it came: the result or the child's own
    exception, after which the child is ready for another call)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not receive.poll(min(left, 1.0)):
            if time.monotonic() >= deadline:
                child.kill()
                raise ModelTimeoutError(timeout_message(what, seconds))
            continue
        try:
            kind, value = receive.recv()
        except EOFError:
            child.join()
            raise ModelRunError(f"{location}: the model's process ended without a result (exit code "
                                f"{child.exitcode}: killed, out of memory or crashed in native code); check the "
                                "package with 'bioimageio test'") from None
        if kind == "image":
            if on_image is not None:
                on_image()
            continue
        if answered is not None:
            answered.append(True)
        if kind == "result":
            return value
        raise value


class IsolatedWorker:
    """One child process kept for many calls, each with its own time limit: :func:`run_isolated` without a fork per
    call, so that the work may keep what it loaded (a model) for the next call.

    The child starts on the first call (and again after a call that timed out or crashed it). With ``seconds`` 0 or
    in a daemonic process the calls run in this process, as :func:`run_isolated` runs them. Use as a context manager:
    leaving it ends the child.

    Attributes
    ----------
    starts : int
        How many children were started (a new one after each call that killed the previous one).
    """

    def __init__(self, *, seconds: float) -> None:
        self.seconds = seconds
        self.starts = 0
        self._child: Any = None
        self._conn: Any = None

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fresh(self) -> bool:
        """Whether the next call runs in a new child (or, in-process, is the first call)."""
        return self._child is None if self._isolating else self.starts == 0

    @property
    def _isolating(self) -> bool:
        return bool(self.seconds) and can_isolate()

    def run(self, work: Callable[..., T], /, *args: Any, what: str, location: str,
            on_image: Callable[[], None] | None = None, **kwargs: Any) -> T:
        """``work(*args, **kwargs, on_image=...)`` in the kept child, killed after ``seconds`` (see
        :func:`run_isolated` for the arguments and what it raises)."""
        if not self._isolating:
            self.starts = max(self.starts, 1)
            return run_isolated(work, *args, seconds=self.seconds, what=what, location=location, on_image=on_image,
                                **kwargs)
        if self._child is None:
            self._start()
        answered: list[bool] = []
        try:
            self._conn.send((work, args, kwargs))
            return _wait(self._child, self._conn, seconds=self.seconds, on_image=on_image, what=what,
                         location=location, answered=answered)
        except BaseException:
            if not answered:  # timed out, died, or interrupted here mid-call: the next call starts a new child
                self.close(kill=True)
            raise

    def _start(self) -> None:
        ctx = _context()
        self._conn, theirs = ctx.Pipe(duplex=True)
        self._child = ctx.Process(target=_serve, name="bioimage-cte: kept model", daemon=True,
                                  args=(theirs, _threads()))
        with _without_main():
            self._child.start()
        theirs.close()  # the child holds the only other end: its death ends the pipe
        self.starts += 1

    def close(self, *, kill: bool = False) -> None:
        """End the child (it finishes on the closed pipe; one that does not within 5 s, or with ``kill``, is
        killed)."""
        child, conn, self._child, self._conn = self._child, self._conn, None, None
        if child is None:
            return
        conn.close()
        if kill:
            child.kill()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
