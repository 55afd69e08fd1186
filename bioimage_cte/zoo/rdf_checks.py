"""Cheap checks of a model package before bioimageio reads it: zip members, the rdf.yaml's YAML and its files.

bioimageio.spec parses and validates a whole RDF, and a hostile one (a YAML alias bomb, an oversized
member) can make that take minutes or gigabytes. :func:`precheck_package` refuses those first, with
a one-line reason, using only the standard library and the bounded YAML parser of
:mod:`bioimage_cte.zoo.safe_yaml`: no torch, no bioimageio.core. :func:`bioimage_cte.run.pipeline.rank` runs it
on every package before the first model loads, so a run whose packages are all broken ends in
well under a second after start-up instead of importing torch first.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bioimage_cte.base.errors import InvalidModelError, UnsafeYamlError, one_line
from bioimage_cte.zoo.archives import DEFAULT_MAX_ENTRY_BYTES, RDF_NAMES, check_zip
from bioimage_cte.zoo.safe_yaml import DEFAULT_MAX_BYTES, load_untrusted_yaml

__all__ = ["precheck_package", "precheck_rdf", "rdf_sources"]

_URL_TIMEOUT_S = 30.0


def precheck_package(location: str, *, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> dict | None:
    """Refuse a package that is unsafe or no model package at all, before bioimageio reads it.

    Returns the RDF as the safe loader parsed it (None when it could not be read here: bioimageio's own error
    follows).

    Parameters
    ----------
    location : str
        A local rdf.yaml or package zip, or the URL of an rdf.yaml.
    max_entry_bytes : int, optional
        Largest unpacked zip member (:func:`bioimage_cte.zoo.archives.check_zip`).

    Raises
    ------
    UnsafeArchiveError
        A zip member would escape the package or is above the limit.
    UnsafeYamlError
        The RDF is too large or a YAML alias bomb.
    InvalidModelError
        The zip is damaged, the RDF is not YAML, not a model RDF, or lists files the package lacks.
    """
    if location.lower().endswith(".zip") and Path(location).is_file():
        check_zip(Path(location), max_entry_bytes=max_entry_bytes)
    return precheck_rdf(location)


def _read_local_rdf(location: str) -> tuple[str, bytes] | None:
    """(file name, bytes) of a package's RDF; None when there is none to read here.

    At most one byte more than the YAML size limit is read: enough for the parser to refuse an
    oversized RDF without holding all of it. A URL of an rdf.yaml is fetched the same way (bounded,
    streamed); a URL of a zip is left to bioimageio.
    """
    if location.startswith(("http://", "https://")):
        return _fetch_rdf(location) if location.lower().endswith(".yaml") else None
    path = Path(location)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in RDF_NAMES if n in zf.namelist()), None)
            if name is None:
                return None
            with zf.open(name) as f:
                return name, f.read(DEFAULT_MAX_BYTES + 1)
    with path.open("rb") as f:
        return path.name, f.read(DEFAULT_MAX_BYTES + 1)


def _fetch_rdf(url: str) -> tuple[str, bytes] | None:
    import httpx

    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=_URL_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > DEFAULT_MAX_BYTES:  # enough to refuse it; never the whole of an endless body
                    break
    except httpx.HTTPError as e:
        raise InvalidModelError(f"{url}: cannot download the rdf.yaml ({one_line(e)}); check the URL and your "
                                "connection") from e
    return url.rsplit("/", 1)[-1] or "rdf.yaml", bytes(body)


def precheck_rdf(location: str) -> dict | None:
    """Name the first problem of an RDF that is no model RDF at all, in words a user can act on.

    bioimageio.spec reports broken YAML and RDFs of other types as long validation reports; this
    parses the RDF the same way (safe YAML 1.2 loader: no tags, no code) and says what it is. A
    YAML alias bomb or an oversized RDF raises here, so that bioimageio.spec never parses it.
    """
    from ruyaml.error import MarkedYAMLError

    try:
        found = _read_local_rdf(location)
    except InvalidModelError:
        raise
    except Exception:  # a damaged zip: bioimageio's own error follows
        return None
    if found is None:
        return None
    name, raw = found
    try:
        content = load_untrusted_yaml(raw, where=f"{name} of {location}")
    except UnsafeYamlError:
        raise
    except UnicodeDecodeError:
        raise InvalidModelError(f"{location}: {name} is not UTF-8 text; save the RDF as UTF-8 YAML") from None
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidModelError(f"{location}: {name} is not valid YAML ({e.problem}{where}); fix its YAML "
                                "syntax") from None
    except Exception as e:
        raise InvalidModelError(f"{location}: {name} is not valid YAML ({type(e).__name__}); fix its YAML "
                                "syntax") from None
    if not isinstance(content, dict):
        raise InvalidModelError(f"{location}: {name} holds a {type(content).__name__}, not the fields of a "
                                "bioimageio RDF; pass a bioimageio model package")
    kind = content.get("type")
    if kind is not None and kind != "model":
        raise InvalidModelError(f"{location}: RDF of type {kind!r}, not a model; pass model packages only")
    missing = None if location.startswith(("http://", "https://")) else _missing_files(location, content)
    if missing:
        field, file_name = missing
        raise InvalidModelError(f"{location}: {file_name} is listed in {name} ({field}) but missing from the "
                                "package; get the complete package again")
    return content


def _missing_files(location: str, content: dict) -> tuple[str, str] | None:
    """(field, file) of the first relative file the RDF lists that the package lacks."""
    path = Path(location)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            present = set(zf.namelist())
        exists = present.__contains__
    else:
        exists = lambda name: (path.parent / name).is_file()  # noqa: E731
    for field, value in rdf_sources(content, ()):
        if "://" not in value and not Path(value).is_absolute() and not exists(value.removeprefix("./")):
            return field, value
    return None


def rdf_sources(node: Any, loc: tuple[str, ...], seen: set[int] | None = None) -> Iterator[tuple[str, str]]:
    """Every ``source`` string of the RDF's files (weights, architecture, test tensors, ...) with its field.

    A YAML alias makes one object appear in many places: each collection is visited once (by
    ``id``), so shared or self-containing data cannot make the walk exponential or endless.
    """
    seen = set() if seen is None else seen
    if isinstance(node, dict | list):
        if id(node) in seen:
            return
        seen.add(id(node))
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "source" and isinstance(value, str) and loc and loc[0] != "config":
                yield ".".join(loc + ("source",)), value
            else:
                yield from rdf_sources(value, loc + (str(key),), seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from rdf_sources(value, loc + (str(i),), seen)
