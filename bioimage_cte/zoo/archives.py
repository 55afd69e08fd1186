"""Model packages as zip archives, checked before anything reads them: no traversal, links or oversized members.

A zoo entry is untrusted: :func:`check_zip` refuses a zip with ``../``, absolute or symlink members, or members
over the size limits, before any member is read, and :func:`safe_extract_zip` extracts only what it checked.
"""

from __future__ import annotations

import shutil
import stat
import tempfile  # noqa: F401  (the doctests use it)
import zipfile
from pathlib import Path

from bioimage_cte.base.errors import InvalidModelError, UnsafeArchiveError, one_line

__all__ = ["DEFAULT_MAX_ENTRY_BYTES", "DEFAULT_MAX_TOTAL_BYTES", "RDF_NAMES", "check_zip", "is_rdf_name",
           "safe_extract_zip"]

DEFAULT_MAX_ENTRY_BYTES = 2 * 1024**3
"""Largest unpacked member of a package zip (2 GiB; ``--max-entry-bytes``): the zoo's largest weights are ~0.5 GB."""
DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
"""Largest unpacked package (8 GiB), or ``max_entry_bytes`` when that is larger."""

#: File names of a package's resource description (RDF).
RDF_NAMES: tuple[str, ...] = ("rdf.yaml", "bioimageio.yaml")


def is_rdf_name(file_name: str) -> bool:
    """Whether a file name is an RDF's (bioimageio also accepts ``<anything>.rdf.yaml``)."""
    return any(file_name == n or file_name.endswith("." + n) for n in RDF_NAMES)


def check_zip(
    path: Path,
    *,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    max_total_bytes: int | None = None,
) -> None:
    """Check that a model zip is safe to read or extract, without extracting it.

    Parameters
    ----------
    path : Path
        The .zip package.
    max_entry_bytes : int, optional
        Largest uncompressed size allowed for one entry (default 2 GiB).
    max_total_bytes : int, optional
        Largest uncompressed size allowed for all entries together (default: 8 GiB, or ``max_entry_bytes``
        when that is larger, so that raising the one limit is enough to accept a package).

    Raises
    ------
    UnsafeArchiveError
        An entry has an absolute path, a drive letter or a ``..`` component, is a symlink, is larger than the
        limits, or names the same file as another entry (after ``./``, ``\\`` and case are normalised).
    InvalidModelError
        The file is missing, not a valid zip, or has no rdf.yaml/bioimageio.yaml at its top level.

    Examples
    --------
    >>> import io, tempfile, zipfile
    >>> p = Path(tempfile.mkdtemp()) / "m.zip"
    >>> with zipfile.ZipFile(p, "w") as zf:
    ...     zf.writestr("rdf.yaml", "type: model\\n")
    >>> check_zip(p)
    """
    path = Path(path)
    if max_total_bytes is None:
        max_total_bytes = max(DEFAULT_MAX_TOTAL_BYTES, max_entry_bytes)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InvalidModelError(
            f"{path} is not a valid zip ({one_line(e)}); re-download or re-export the model package"
        ) from e
    except OSError as e:
        raise InvalidModelError(
            f"cannot open model zip {path}: {one_line(e.strerror or e)}; check the path and its permissions"
        ) from e
    with zf:
        infos = zf.infolist()
    total = 0
    top_level: set[str] = set()
    seen: dict[str, str] = {}
    for info in infos:
        name = info.filename
        fix = "do not use this archive; get the package again from a trusted source"
        # Windows tools may write backslash separators, which zipfile would keep as part of a name
        parts = name.replace("\\", "/").split("/")
        # two members that unpack to one file (exactly, or on a case-insensitive file system): which one a reader
        # takes depends on the reader, the classic way to smuggle a second rdf.yaml past a check
        key = "/".join(p for p in parts if p not in ("", ".")).lower()
        if key in seen:
            raise UnsafeArchiveError(f"zip {path} has two members for one file, {seen[key]!r} and {name!r}; {fix}")
        seen[key] = name
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
            raise UnsafeArchiveError(f"zip {path} has an entry with an absolute path {name!r}; {fix}")
        if ".." in parts:
            raise UnsafeArchiveError(
                f"zip {path} has an entry {name!r} that points outside the package; {fix}"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"zip {path} has a symlink entry {name!r}; {fix}")
        if info.file_size > max_entry_bytes:
            raise UnsafeArchiveError(
                f"zip {path} entry {name!r} unpacks to {info.file_size} bytes, above the limit of "
                f"{max_entry_bytes}; raise the limit (--max-entry-bytes, max_entry_bytes) if you trust this package"
            )
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"zip {path} unpacks to more than {max_total_bytes} bytes (reached at entry {name!r}); "
                "raise the limit (--max-entry-bytes, max_total_bytes) if you trust this package"
            )
        if len(parts) == 1:
            top_level.add(name)
    if not any(is_rdf_name(n) for n in top_level):
        raise InvalidModelError(
            f"zip {path} has no rdf.yaml or bioimageio.yaml at its top level; "
            "pass a bioimageio model package (e.g. one saved with bioimageio.spec.save_bioimageio_package)"
        )


def safe_extract_zip(path: Path, dest: Path) -> Path:
    """Extract a model zip into ``dest`` after :func:`check_zip`, never writing outside ``dest``.

    Parameters
    ----------
    path : Path
        The .zip package.
    dest : Path
        Folder to extract into; created if missing.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    UnsafeArchiveError, InvalidModelError
        As :func:`check_zip`; nothing is written when an entry is unsafe.

    Examples
    --------
    >>> import tempfile, zipfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> with zipfile.ZipFile(tmp / "m.zip", "w") as zf:
    ...     zf.writestr("rdf.yaml", "type: model\\n")
    >>> (safe_extract_zip(tmp / "m.zip", tmp / "out") / "rdf.yaml").is_file()
    True
    """
    path = Path(path)
    dest = Path(dest)
    check_zip(path)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(path) as zf:
        # every target is resolved before the first write, so a symlink already inside dest
        # cannot redirect an entry after part of the archive has been written
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in zf.infolist():
            target = (root / info.filename.replace("\\", "/")).resolve()
            if target != root and not target.is_relative_to(root):
                raise UnsafeArchiveError(
                    f"zip {path} entry {info.filename!r} would be written outside {dest}; "
                    "extract into an empty folder without symlinks"
                )
            plan.append((info, target))
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest
