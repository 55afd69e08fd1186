"""Writing files so that nothing a user had is lost: atomic replacement, backups, temporary-file clean-up.

Every file the project writes goes through :func:`write_atomic` (or :func:`atomic_write`). A write to a regular
file, or to a path that does not exist yet, goes to a hidden temporary file next to its destination
(``.<name>.<pid>.<random>.tmp``), is flushed to disk and then moved over the destination with :func:`os.replace`:
a reader sees the old file or the new one, never half of one. A path that exists and is not a regular file is
never replaced: a character device or a FIFO (``/dev/stdout``, ``/dev/null``, a named pipe) is written to
directly, as a user who names one means; a folder, a socket or a block device is refused.

A run killed mid-write leaves its temporary file, which no package finder or fingerprint counts
(:func:`is_temporary`) and which the next write to the same destination removes once the process that made it
is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from bioimage_cte.base.errors import WriteError, one_line

__all__ = ["BACKUP_SUFFIX", "STREAMS", "atomic_write", "is_temporary", "keep_backup", "special_kind", "write_atomic"]

#: Suffix of the backups kept of a replaced file (``rdf.yaml.bak``, then ``rdf.yaml.bak.1``, ...).
BACKUP_SUFFIX = ".bak"


#: kinds of existing non-regular files that are written to directly (never replaced)
STREAMS = ("character device", "FIFO")


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file (links followed); None for a file or nothing.

    Examples
    --------
    >>> special_kind(Path("/dev/null")), special_kind(Path("/")), special_kind(Path("/no/such/file"))
    ('character device', 'folder', None)
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a dangling link: written as a new file
        return None
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISDIR, "folder"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def write_atomic(path: Path, data: bytes, *, backup: bool = False) -> Path:
    """Write ``data`` to ``path``: atomically for a file, directly for a device or FIFO; never replace anything else.

    Raises
    ------
    WriteError
        The folder cannot be created or written, or ``path`` is a folder, socket or block device.
    """
    path = Path(path)
    try:
        if special_kind(path) in STREAMS:
            with open(path, "wb") as f:  # a device or pipe: no temporary file, no rename
                write_all(f, data)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: write_all(f, data), backup=backup)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or one_line(e)}; choose a writable folder") from e
    return path


def write_all(f: IO[bytes], data: bytes) -> None:
    """Write ``data`` to an open file; a separate step so tests can interrupt a write halfway."""
    f.write(data)


_TEMP_NAME = re.compile(r"^\.(?P<dest>.+)\.(?P<pid>\d+)\.[0-9a-f]{12}\.tmp$")


def temp_path(dest: Path) -> Path:
    # the writer's pid in the name lets a later run tell a dead run's leftover from a concurrent writer's file
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of this module's temporary files (never a package or its part).

    Examples
    --------
    >>> is_temporary(".m.zip.4242.0123456789ab.tmp"), is_temporary("m.zip")
    (True, False)
    """
    return _TEMP_NAME.match(name) is not None


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(dest: Path) -> None:
    """Remove temporary files of ``dest`` left by runs that were killed mid-write (their process is gone).

    Best effort: a leftover that cannot be removed only takes space, it is never read.
    """
    try:
        siblings = list(dest.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        found = _TEMP_NAME.match(path.name)
        if found is None or found["dest"] != dest.name or _process_alive(int(found["pid"])):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def fsync_folder(folder: Path) -> None:
    # makes the rename itself durable; not every platform can open a folder, which only costs durability
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _backups(folder: Path, name: str) -> list[tuple[int, Path]]:
    """The backups of the file ``name`` in ``folder``, oldest first: ``name.bak`` is 0, ``name.bak.N`` is N."""
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name == name + BACKUP_SUFFIX:
                found.append((0, p))
            elif p.name.startswith(name + BACKUP_SUFFIX + ".") and p.name.rsplit(".", 1)[1].isdigit():
                found.append((int(p.name.rsplit(".", 1)[1]), p))
    return sorted(found)


def keep_backup(path: Path, *, folder: Path | None = None, keep: int | None = None) -> Path:
    """Keep the current ``path`` as a numbered backup before it is replaced (a hard link when possible).

    Parameters
    ----------
    path : Path
        The file about to be replaced.
    folder : Path, optional
        Where the backups go (created if needed); default: next to ``path``.
    keep : int, optional
        Keep only this many backups of ``path`` in ``folder``, the newest; default: all.

    Returns
    -------
    Path
        The new backup: ``<name>.bak``, then ``<name>.bak.1``, ... (numbers keep growing when old ones are removed).
    """
    folder = path.parent if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = _backups(folder, path.name)
    n = existing[-1][0] + 1 if existing else 0
    backup = folder / (path.name + BACKUP_SUFFIX + (f".{n}" if n else ""))
    try:
        os.link(path, backup)  # no copy of a large zip: the old inode lives on under the backup name
    except OSError:
        shutil.copy2(path, backup)
    if keep is not None and keep > 0:
        for _, old in (existing + [(n, backup)])[:-keep]:
            old.unlink(missing_ok=True)
    return backup


def atomic_write(
    dest: Path, fill: Callable[[IO[bytes]], None], *, backup: bool, mode_from: Path | None = None,
    backup_dir: Path | None = None, keep_backups: int | None = None,
) -> None:
    """Write ``dest`` through a temporary file in its folder; ``dest`` is untouched unless everything succeeded.

    The new file gets the permissions of the file it replaces, or of ``mode_from`` for a new file. With
    ``backup``, the replaced file is kept in ``backup_dir`` (default: next to it), the newest ``keep_backups``.
    """
    kind = special_kind(dest)
    if kind is not None:
        raise WriteError(f"cannot write {dest}: it is a {kind}, not a regular file, and is never replaced; pass the "
                         "path of a file")
    remove_stale_temporaries(dest)
    tmp = temp_path(dest)
    # os.open with 0o666 gives a new file the user's umask, where mkstemp would make it private (0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        template = dest if dest.exists() else mode_from
        if template is not None:
            shutil.copymode(template, tmp)
        if backup and dest.exists():
            keep_backup(dest, folder=backup_dir, keep=keep_backups)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(dest.parent)
