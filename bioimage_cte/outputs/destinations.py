"""Where results go: destinations checked before a long run starts, and a fallback when writing still fails.

A ranking takes minutes to hours. :func:`check_destination` finds the usual mistakes (a folder that does not
exist, a path below a regular file, a folder that cannot be written, a folder or socket given as the file) before
any model runs; :func:`write_or_fallback`
writes at the end and, if that fails anyway (disk full, folder removed meanwhile), puts the bytes in a file
in the working folder or the temp folder and says where, so that finished work is never lost.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bioimage_cte.base.errors import WriteError, one_line
from bioimage_cte.base.fileutils import STREAMS, special_kind, write_atomic

__all__ = ["STDOUT", "Written", "check_destination", "is_stdout", "write_or_fallback"]

#: The path that means "standard output" (``-o -``).
STDOUT = "-"


def _reason(e: OSError) -> str:
    return one_line(e.strerror or e)


def is_stdout(path: Path | str) -> bool:
    """Whether ``path`` means standard output: ``-``, or a name of this process's standard output (``/dev/stdout``).

    Examples
    --------
    >>> is_stdout("-"), is_stdout("ranking.json")
    (True, False)
    """
    if str(path) == STDOUT:
        return True
    try:
        target, out = os.stat(Path(path).expanduser()), os.fstat(1)
    except OSError:
        return False
    return (target.st_dev, target.st_ino, target.st_rdev) == (out.st_dev, out.st_ino, out.st_rdev)


def check_destination(path: Path, *, option: str) -> None:
    """Raise :class:`WriteError` naming ``path`` and ``option`` unless a file can be written there.

    The nearest existing ancestor must be a folder in which this process can create a file: a temporary file is
    created there and removed (permission bits do not tell, e.g. for root under ``/proc``); missing folders are
    created when writing. ``path`` itself may be missing, a regular file, or a character device or FIFO (written
    to directly); a folder, socket or block device is refused: it would never be replaced. Nothing is left behind.

    Examples
    --------
    >>> import tempfile
    >>> check_destination(Path(tempfile.mkdtemp()) / "new" / "ranking.json", option="--output")
    >>> check_destination(Path("/dev/null"), option="--output")
    >>> check_destination(Path("/proc/version") / "x.json", option="--output")
    Traceback (most recent call last):
    ...
    bioimage_cte.base.errors.WriteError: cannot write --output /proc/version/x.json: /proc/version is a file, not a \
folder; pass a path in a folder you can write to
    """
    if is_stdout(path):
        return
    path = Path(path).expanduser()
    fix = "pass a path in a folder you can write to"
    kind = special_kind(path)
    if kind in STREAMS:
        return
    if kind is not None:
        example = f", e.g. {path / 'out.json'}" if kind == "folder" else ""
        raise WriteError(f"cannot write {option} {path}: it is a {kind}, not a file, and is never replaced; pass a "
                         f"file name{example}")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"cannot write {option} {path}: {parent} is a file, not a folder; {fix}")
    try:  # the only reliable test is to try
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".bioimage-cte-probe-")
    except OSError as e:
        raise WriteError(f"cannot write {option} {path}: cannot create a file in {parent} ({_reason(e)}); "
                         f"{fix}") from e
    os.close(fd)
    os.unlink(probe)
    if path.exists() and not os.access(path, os.W_OK):
        raise WriteError(f"cannot write {option} {path}: the file is read-only; {fix}")


@dataclass(frozen=True)
class Written:
    """Where :func:`write_or_fallback` put the data: ``path`` (None: nowhere, the caller must print it) and,
    when that is not where it was asked to go, why."""

    path: Path | None
    problem: str | None = None


def write_or_fallback(path: Path, data: bytes, *, stem: str = "bioimage-cte-ranking") -> Written:
    """Write ``data`` to ``path`` atomically; if that fails, to a new file in the working folder or the temp folder.

    Returns
    -------
    Written
        ``path`` with no problem; or the fallback file and the one-line reason ``path`` failed; or no path at
        all when no fallback could be written either (the caller then prints the data).
    """
    try:
        return Written(write_atomic(Path(path).expanduser(), data))
    except OSError as e:
        problem = one_line(e) if isinstance(e, WriteError) else f"cannot write {path} ({_reason(e)})"
    name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            return Written(write_atomic(folder / name, data), problem)
        except OSError:
            continue
    return Written(None, problem)
