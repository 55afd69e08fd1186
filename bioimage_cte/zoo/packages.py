"""A model package on disk: open it, read its RDF as bioimageio reads it, and rewrite it with a new RDF.

A package is a folder holding an ``rdf.yaml`` (or ``bioimageio.yaml``), that file itself, or a zip with it at the
top. :func:`open_package` tells which, :func:`read_rdf` reads the RDF as plain data, :func:`update_rdf` sets one
value in the RDF text with the round-trip parser (comments and layout kept), and :func:`rewrite_package` writes the
package with a new RDF. Packages are rewritten, never edited in place byte by byte:

- a package folder (or its ``rdf.yaml``): the new ``rdf.yaml`` replaces the old one, which is kept as
  ``bioimage-cte-backups/<folder>/rdf.yaml.bak`` (then ``.bak.1``, ...) beside the package, or the folder is
  copied elsewhere with the new file;
- a zipped package: a new zip with every other entry identical (same names, same bytes, same order) replaces
  the old one, which is kept as ``bioimage-cte-backups/<name>.zip.bak``, or is written elsewhere.

Only the newest three backups of a package are kept.

Every write goes through :mod:`bioimage_cte.base.fileutils`: a temporary file next to its destination, flushed to disk
and moved over the destination, so an interrupted run leaves either the old or the new package, never half of
one. :func:`locate_package` finds the local package a ranking's model ``source`` names.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from bioimage_cte.base import fileutils
from bioimage_cte.base.errors import InvalidModelError, WriteError, one_line
from bioimage_cte.zoo.sources import RDF_NAMES

__all__ = [
    "Package",
    "locate_package",
    "open_package",
    "output_destination",
    "parse_rdf",
    "rdf_location",
    "read_rdf",
    "read_rdf_text",
    "rewrite_package",
    "update_rdf",
]


@dataclass(frozen=True)
class Package:
    """A local model package: a zip, or a folder and the name of its RDF file."""

    kind: Literal["zip", "folder"]
    path: Path  # the .zip, or the package folder
    rdf_name: str

    @property
    def checksum_file(self) -> Path:
        """The file whose sha256 a ranking records (:func:`bioimage_cte.zoo.sources.file_sha256` of the location)."""
        return self.path if self.kind == "zip" else self.path / self.rdf_name

    @property
    def where(self) -> str:
        """The RDF's place, for messages: ``<zip>:<rdf name>`` or the rdf file's path."""
        return f"{self.path}:{self.rdf_name}" if self.kind == "zip" else str(self.path / self.rdf_name)


# --- reading ------------------------------------------------------------------------------------------------------


def open_package(location: Path) -> Package:
    """The package at ``location``: a package folder, its rdf.yaml (or bioimageio.yaml) or a package .zip.

    Raises
    ------
    InvalidModelError
        Nothing there, not a valid zip, or no RDF where one is expected.
    """
    location = Path(location)
    if location.is_dir():
        name = next((n for n in RDF_NAMES if (location / n).is_file()), None)
        if name is None:
            raise InvalidModelError(f"{location}: no rdf.yaml or bioimageio.yaml in this folder; pass a model "
                                    "package folder, its rdf.yaml or a package .zip")
        return Package("folder", location, name)
    if not location.is_file():
        raise InvalidModelError(f"{location} does not exist; pass a model package folder, rdf.yaml or .zip")
    if location.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(location) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError) as e:
            raise InvalidModelError(f"{location} is not a valid zip ({one_line(e)}); re-download or re-export "
                                    "the model package") from e
        name = next((n for n in RDF_NAMES if n in names), None)
        if name is None:
            raise InvalidModelError(f"{location}: no rdf.yaml or bioimageio.yaml at the top of the zip; pass a "
                                    "bioimageio model package")
        return Package("zip", location, name)
    if location.name in RDF_NAMES or location.name.endswith(tuple("." + n for n in RDF_NAMES)):
        return Package("folder", location.parent, location.name)
    raise InvalidModelError(f"{location}: not an rdf.yaml, package folder or .zip; pass a model package")


def read_rdf_text(pkg: Package) -> str:
    """The RDF file's text (UTF-8).

    Raises
    ------
    InvalidModelError
        A corrupt zip, an RDF that is not UTF-8, or a file that cannot be read.
    """
    try:
        if pkg.kind == "zip":
            with zipfile.ZipFile(pkg.path) as zf:
                raw = zf.read(pkg.rdf_name)
        else:
            raw = (pkg.path / pkg.rdf_name).read_bytes()
        return raw.decode("utf-8")
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InvalidModelError(f"{pkg.path} is a corrupt zip ({one_line(e)}); re-download or re-export the "
                                "model package") from e
    except UnicodeDecodeError as e:
        raise InvalidModelError(f"{pkg.where} is not UTF-8 text; re-save the rdf.yaml as UTF-8") from e
    except OSError as e:
        raise InvalidModelError(f"cannot read {pkg.where}: {e.strerror or e}; check its permissions") from e


def parse_rdf(text: str, where: str) -> dict[str, Any]:
    """RDF text as plain data, read as YAML 1.2 the way bioimageio.spec reads it (``where`` names it in errors).

    Raises
    ------
    InvalidModelError
        Not valid YAML, not a mapping, or too large or alias-laden to parse safely
        (:class:`~bioimage_cte.base.errors.UnsafeYamlError`, see :mod:`bioimage_cte.zoo.safe_yaml`).
    """
    # bioimageio.spec reads RDFs with ruyaml as YAML 1.2; PyYAML reads YAML 1.1, where `no` is false and
    # `1e-6` a string, so reading with PyYAML could silently change a model's values.
    from ruyaml.error import YAMLError

    from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

    try:  # an alias bomb or oversized RDF raises UnsafeYamlError, an InvalidModelError naming the file
        data = load_untrusted_yaml(text, where=where)
    except YAMLError as e:
        raise InvalidModelError(f"{where} is not valid YAML ({one_line(e)}); fix the rdf.yaml") from e
    if not isinstance(data, dict):
        raise InvalidModelError(f"{where} is not a YAML mapping; pass a bioimageio model package")
    return data


def read_rdf(location: Path) -> dict[str, Any]:
    """The RDF of a local model package (folder, rdf.yaml or zip) as plain data, read as bioimageio reads it.

    Raises
    ------
    InvalidModelError
        Not a package, a corrupt zip, or an rdf.yaml that is not a YAML mapping.
    """
    pkg = open_package(Path(location))
    return parse_rdf(read_rdf_text(pkg), pkg.where)


def rdf_location(path: Path) -> Path:
    """The rdf.yaml of a package folder; a zip or an rdf.yaml is its own location."""
    if path.is_dir():
        return next((path / n for n in RDF_NAMES if (path / n).is_file()), path)
    return path


def locate_package(source: str, *, base: Path | None = None) -> Path:
    """The local package a ranking's model ``source`` refers to.

    Parameters
    ----------
    source : str
        The source as recorded in the ranking (the path given to ``rank``).
    base : Path, optional
        Folder to try for a relative path that does not exist from the current folder,
        typically the ranking JSON's folder.

    Raises
    ------
    InvalidModelError
        ``source`` is a URL or cannot be found.
    """
    base = Path.cwd() if base is None else Path(base)
    if source.startswith(("http://", "https://")):
        raise InvalidModelError(f"{source} is a URL; only local packages can be annotated (download the package, "
                                "rank and annotate the local copy)")
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (base / path).exists():
        return base / path
    where = "" if path.is_absolute() else f" (looked in the current folder and in {base})"
    raise InvalidModelError(f"{source} not found{where}; was the package moved after ranking? Rank again, or run "
                            "from the folder 'rank' ran in")


# --- writing ------------------------------------------------------------------------------------------------------


def _sequence_indent(text: str) -> tuple[int, int]:
    """(sequence indent, dash offset) of the text's block lists, so the untouched lists keep their look."""
    lines = text.splitlines()
    for before, line in zip(lines, lines[1:], strict=False):
        stripped = line.lstrip(" ")
        if stripped.startswith("- ") and before.rstrip().endswith(":") and not before.lstrip().startswith("-"):
            offset = (len(line) - len(stripped)) - (len(before) - len(before.lstrip(" ")))
            if 0 <= offset <= 8:
                return offset + 2, offset
    return 4, 2  # bioimageio.spec writes lists indented this way


def update_rdf(text: str, keys: Sequence[str], value: Any) -> str:
    r"""The RDF ``text`` with ``value`` set at the nested ``keys``, written back with the round-trip parser.

    Comments, key order, quoting and list layout of the original are kept; only the value at ``keys`` (and any
    mapping created on the way) is new. The text must already have passed :func:`parse_rdf` (bounded, safe):
    the round-trip parser builds only mappings, lists and scalars.

    Examples
    --------
    >>> print(update_rdf("name: x  # the name\ntags:\n  - a\n", ["config", "n"], 1), end="")
    name: x  # the name
    tags:
      - a
    config:
      n: 1
    """
    import io

    from ruyaml import YAML
    from ruyaml.comments import CommentedMap

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long description differently from the original
    sequence, offset = _sequence_indent(text)
    yaml.indent(mapping=2, sequence=sequence, offset=offset)
    head, body, tail = _frame(text)
    document = yaml.load(body)
    node = document
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = CommentedMap()
        node = node[key]
    node[keys[-1]] = value
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return head + buffer.getvalue() + tail


def _frame(text: str) -> tuple[str, str, str]:
    """(head, body, tail): the comments, blank lines, directives and ``---`` before the first key, the document,
    and the comments and blank lines after its last value, each kept byte for byte (the round-trip parser would
    drop a comment above ``---``, move a closing comment above a key added at the end, or write a header the file
    did not have)."""
    lines = text.splitlines(keepends=True)

    def framing(line: str) -> bool:
        stripped = line.strip()
        return not stripped or stripped.startswith("#")

    start = 0
    while start < len(lines) and (framing(lines[start]) or lines[start].startswith(("%", "---"))):
        start += 1
    end = len(lines)
    while end > start and framing(lines[end - 1]):
        end -= 1
    body = "".join(lines[start:end])
    if body and not body.endswith("\n"):
        body += "\n"
    return "".join(lines[:start]), body, "".join(lines[end:])


def _copy_entry(zin: zipfile.ZipFile, zout: zipfile.ZipFile, info: zipfile.ZipInfo, data: bytes | None) -> None:
    """Copy one zip entry with its name, time, mode and compression; ``data`` replaces its content if given."""
    new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.internal_attr = info.internal_attr
    new.create_system = info.create_system
    new.comment = info.comment
    if data is not None:
        zout.writestr(new, data)
        return
    if info.is_dir():
        zout.writestr(new, b"")
        return
    new.file_size = info.file_size
    with zin.open(info) as src, zout.open(new, "w", force_zip64=info.file_size >= zipfile.ZIP64_LIMIT) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


#: Backups of packages rewritten in place go to this folder beside the packages, never inside a package (where
#: they would become part of it); only the newest KEEP_BACKUPS of each file are kept.
BACKUP_FOLDER = "bioimage-cte-backups"
KEEP_BACKUPS = 3


def backup_folder(pkg: Package) -> Path:
    """Where the backups of ``pkg`` go: ``<parent>/bioimage-cte-backups`` for a zip, ``.../<folder name>`` for a
    folder package."""
    base = pkg.path.parent / BACKUP_FOLDER
    return base if pkg.kind == "zip" else base / pkg.path.name


def _rewrite_zip(source: Path, rdf_name: str, rdf: bytes, dest: Path, *, backup: bool,
                 backup_dir: Path | None = None) -> None:
    def fill(f: IO[bytes]) -> None:
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(f, "w") as zout:
            for info in zin.infolist():
                _copy_entry(zin, zout, info, rdf if info.filename == rdf_name else None)
            zout.comment = zin.comment

    try:
        fileutils.atomic_write(dest, fill, backup=backup, mode_from=source, backup_dir=backup_dir,
                               keep_backups=KEEP_BACKUPS)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InvalidModelError(f"{source} is a corrupt zip ({one_line(e)}); re-download or re-export the model "
                                "package") from e


def _copy_folder(source: Path, rdf_name: str, rdf: bytes, dest: Path) -> None:
    """Copy a package folder to ``dest`` with a new rdf file; ``dest`` appears complete or not at all."""
    fileutils.remove_stale_temporaries(dest)
    tmp = fileutils.temp_path(dest)
    tmp.mkdir()
    try:
        backups = shutil.ignore_patterns(f"*{fileutils.BACKUP_SUFFIX}", f"*{fileutils.BACKUP_SUFFIX}.*")
        # neither backups nor a killed write-back's temporary files are part of the package
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=lambda folder, names: backups(folder, names)
                        | {n for n in names if fileutils.is_temporary(n)})
        for copied in tmp.rglob("*"):  # on disk before the rename publishes the folder, as the rdf below
            if copied.is_file() and not copied.is_symlink():
                with copied.open("rb") as f:
                    os.fsync(f.fileno())
        with (tmp / rdf_name).open("wb") as f:
            fileutils.write_all(f, rdf)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fileutils.fsync_folder(dest.parent)


def output_destination(pkg: Package, output: Path) -> Path:
    """Where a copy of ``pkg`` goes in the folder ``output``: under the package's own name.

    Raises
    ------
    WriteError
        ``output`` is the folder the package is in (the copy would replace the original).
    """
    dest = Path(output) / pkg.path.name
    if dest.resolve() == pkg.path.resolve():
        raise WriteError(f"{output} is the folder the package {pkg.path} is in; omit the output folder to annotate "
                         "in place, or choose another one")
    return dest


def rewrite_package(pkg: Package, rdf: bytes, dest: Path | None = None, *, backup: bool = True) -> Path:
    """Write ``pkg`` with ``rdf`` as its RDF file, in place (``dest`` None) or as a new package at ``dest``.

    Every other file stays byte for byte the same. In place, ``backup`` keeps the replaced file as ``<name>.bak``
    (``.bak.1``, ...) in :func:`backup_folder`, beside the package, the newest :data:`KEEP_BACKUPS` of them.
    The destination is complete or untouched, whatever happens.

    Returns
    -------
    Path
        The written package: the .zip, or the RDF file of a folder.

    Raises
    ------
    InvalidModelError
        A zip turned out corrupt while it was copied.
    OSError
        The destination cannot be written (nothing was changed).
    """
    if pkg.kind == "zip":
        target = pkg.path if dest is None else Path(dest)
        _rewrite_zip(pkg.path, pkg.rdf_name, rdf, target, backup=backup, backup_dir=backup_folder(pkg))
        return target
    if dest is None:
        fileutils.atomic_write(pkg.path / pkg.rdf_name, lambda f: fileutils.write_all(f, rdf), backup=backup,
                               backup_dir=backup_folder(pkg), keep_backups=KEEP_BACKUPS)
        return pkg.path / pkg.rdf_name
    _copy_folder(pkg.path, pkg.rdf_name, rdf, Path(dest))
    return Path(dest) / pkg.rdf_name
