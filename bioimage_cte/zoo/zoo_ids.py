"""Zoo IDs, versions and DOIs as model sources, resolved by bioimageio.spec.

``affable-shark``, ``affable-shark/1.2``, ``bioimage-io/affable-shark/1.2`` and ``10.5281/zenodo.5764892`` name a
published model the way the bioimage.io website shows it. :func:`resolve_zoo_id` looks the ID up in the zoo's ID
map (``BIOIMAGEIO_ID_MAP``, bioimageio.spec's ``settings.id_map``) and downloads the package it names, both through
bioimageio.spec's own reader and disk cache (``BIOIMAGEIO_CACHE_PATH``): nothing here speaks HTTP itself.

bioimageio.spec keeps every download in its cache, by URL and by content hash, but does not use the cache for the
ID map itself when it resolves an ID (it asks the server every time, and an unreachable map fails the ID). Here the
map is read through the same reader, so it is cached too: when the server cannot be reached the last map this
machine saw is used, and the package, whose sha256 the map names, comes from the cache without a connection. The
package is then kept as a ``.zip`` beside the cache (``<cache>/bioimage-cte/packages``), which the rest of the
run reads like any local package (its zip checks, tags and fingerprint included).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from bioimage_cte.base.errors import InvalidModelError, one_line

__all__ = ["is_zoo_id", "resolve_zoo_id", "zoo_id_keys"]

_COLLECTION_PREFIX = "bioimage-io/"
# a zoo nickname (two or more lower-case words joined by '-', e.g. affable-shark, laid-back-t-rex), a version
_NICKNAME = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+"
_VERSION = r"(?:/[0-9][0-9A-Za-z.+_-]*)?"
_ID = re.compile(rf"^(?:{re.escape(_COLLECTION_PREFIX)})?{_NICKNAME}{_VERSION}$")
# a DOI as bioimage.io lists them (10.5281/zenodo.5764892, optionally a record version: .../6647674)
_DOI = re.compile(r"^(?:doi:|https?://doi\.org/)?(10\.\d{4,9}/[^\s/]+(?:/[0-9]+)?)$", re.IGNORECASE)
_FIX = "check the ID on bioimage.io, or pass a package folder, .zip or URL"


def is_zoo_id(text: str) -> bool:
    """Whether ``text`` reads as a zoo ID, a versioned ID or a DOI (not whether the zoo has it).

    Examples
    --------
    >>> [is_zoo_id(t) for t in ("affable-shark", "affable-shark/1.2", "bioimage-io/affable-shark/1.2",
    ...                         "10.5281/zenodo.5764892", "zoo/", "model.zip", "https://x.org/rdf.yaml")]
    [True, True, True, True, False, False, False]
    """
    return bool(_ID.match(text) or _DOI.match(text))


def zoo_id_keys(text: str) -> list[str]:
    """The ID map keys tried for ``text``, in order: as given, then without the ``bioimage-io/`` prefix or DOI scheme.

    Examples
    --------
    >>> zoo_id_keys("bioimage-io/affable-shark/1.2")
    ['bioimage-io/affable-shark/1.2', 'affable-shark/1.2']
    >>> zoo_id_keys("doi:10.5281/zenodo.5764892")
    ['doi:10.5281/zenodo.5764892', '10.5281/zenodo.5764892']
    """
    keys = [text, text.removeprefix(_COLLECTION_PREFIX)]
    doi = _DOI.match(text)
    if doi:
        keys.append(doi.group(1))
    return list(dict.fromkeys(keys))


def _display_name(text: str) -> str:
    doi = _DOI.match(text)
    return (doi.group(1) if doi else text.removeprefix(_COLLECTION_PREFIX)).replace("/", "-")


def _id_map() -> tuple[dict[str, Any], str | None]:
    """The zoo's ID map, and None, or the one this machine cached last with why the server could not be used."""
    import json

    from bioimageio.spec import settings
    from bioimageio.spec.common import HttpUrl
    from bioimageio.spec.utils import get_reader

    url = HttpUrl(settings.id_map)
    try:
        return json.loads(get_reader(url, progressbar=False).read()), None
    except Exception as e:  # offline, server down, not JSON: the cached copy, if any, is as good as it gets
        problem = one_line(e)
    cached = settings.disk_cache.get_by_url(url=url)
    if cached is None:
        raise InvalidModelError(
            f"cannot resolve zoo IDs: the bioimage.io ID map {url} cannot be read ({problem}) and "
            f"none is cached in {settings.cache_path}; connect to the internet (or set "
            "BIOIMAGEIO_ID_MAP), or pass a package folder, .zip or URL"
        )
    return json.loads(cached.read()), problem


def _entry(text: str, id_map: dict[str, Any], offline: str | None) -> Any:
    from bioimageio.spec import settings
    from bioimageio.spec._internal.io import LightHttpFileDescr

    for key in zoo_id_keys(text):
        if key in id_map:
            return LightHttpFileDescr.model_validate(id_map[key])
    near = difflib.get_close_matches(text.removeprefix(_COLLECTION_PREFIX), [str(k) for k in id_map], n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    where = f"the ID map cached from {settings.id_map} (offline: {offline})" if offline else settings.id_map
    raise InvalidModelError(f"zoo ID {text} is not in {where}{hint}; {_FIX}")


def _package_path(text: str, sha256: str) -> Path:
    from bioimageio.spec import settings

    return Path(settings.cache_path) / "bioimage-cte" / "packages" / f"{_display_name(text)}-{sha256[:16]}.zip"


def _write_atomic(reader: Any, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".zip", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(reader, out)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _materialize(entry: Any, dest: Path) -> None:
    """The package ``entry`` names, as a zip at ``dest``: a zip as served, an rdf.yaml packed with its files."""
    from bioimageio.spec import save_bioimageio_package

    # bioimageio.spec's reader: its disk cache answers for a sha256 it has, without a connection
    reader = entry.get_reader(progressbar=False)
    is_zip = zipfile.is_zipfile(reader)
    if dest.is_file():  # kept before: the same sha256, so the same package
        return
    if is_zip:
        reader.seek(0)
        _write_atomic(reader, dest)
        return
    # an rdf.yaml (how the zoo lists its models): bioimageio.spec fetches and packs every file it names
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".part-{os.getpid()}-{dest.name}")  # a run stopped half-way leaves no package behind
    try:
        save_bioimageio_package(str(entry.source), output_path=part, allow_invalid=True)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def resolve_zoo_id(text: str) -> tuple[str, Path]:
    """The package a zoo ID, versioned ID or DOI names: its display name and a local ``.zip`` of it.

    Parameters
    ----------
    text : str
        As the user gave it: ``affable-shark``, ``affable-shark/1.2``, ``bioimage-io/affable-shark/1.2`` or a DOI
        (``10.5281/zenodo.5764892``).

    Raises
    ------
    InvalidModelError
        One line: the ID map cannot be read and none is cached (offline), the ID is not in it, or its package cannot
        be downloaded and is not cached.
    """
    id_map, offline = _id_map()
    entry = _entry(text, id_map, offline)
    dest = _package_path(text, str(entry.sha256))
    try:
        _materialize(entry, dest)
    except Exception as e:
        why = f"offline: {offline}; " if offline else ""
        raise InvalidModelError(
            f"zoo ID {text}: its package {entry.source} cannot be downloaded ({why}"
            f"{one_line(e)}) and is not cached; connect to the internet, or {_FIX}"
        ) from e
    return _display_name(text), dest
