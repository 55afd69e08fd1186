"""Finding model packages: rdf.yaml files, package folders and zips, folders of packages,
zoo collection indexes and URLs.

Nothing here downloads a model or validates its description: :func:`find_models` only
works out *where* each model is, so that a bad package becomes one failure later on
instead of stopping the whole run. The one exception is local zip files, which are
checked for unsafe entries before anything else reads them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urljoin, urlparse

from bioimage_cte.base.errors import BioimageCteError, InvalidIndexError, InvalidModelError, one_line
from bioimage_cte.zoo.archives import RDF_NAMES, check_zip, is_rdf_name, safe_extract_zip

__all__ = [
    "RDF_NAMES",
    "ModelSource",
    "SourceProblem",
    "check_zip",
    "file_sha256",
    "filter_by_tag",
    "mixed_tasks_warning",
    "missing_sources",
    "missing_tag_error",
    "tag_counts",
    "find_models",
    "locate_models",
    "read_rdf",
    "read_tags",
    "read_collection_index",
    "safe_extract_zip",
]

"""File names of a model description, in the order bioimageio prefers them."""

_ACCEPTED = (
    "an rdf.yaml/bioimageio.yaml file, a package folder or .zip, a folder of packages, "
    "a collection index .json, or an http(s) URL"
)
_INDEX_TIMEOUT_S = 30.0
MAX_INDEX_BYTES = 64 * 1024**2
"""Largest collection index read (64 MiB); the zoo's index.json is a few MB."""
_ZOO_ID_PREFIX = "bioimage-io/"


@dataclass(frozen=True)
class ModelSource:
    """Where one model package is, before anything is loaded from it.

    Parameters
    ----------
    name : str
        Short display name: the package folder name, the zip stem or the index id.
    source : str
        The spec as the user gave it; for index entries, the RDF source as the index lists it.
    kind : {"rdf", "folder", "zip", "url", "index"}
        How the model was found.
    location : str
        What to pass to ``bioimageio.spec.load_description`` or
        ``bioimageio.core.load_model_description``: a local path to an rdf.yaml or a .zip,
        or a URL.

    Examples
    --------
    >>> ModelSource("demo", "https://x.org/rdf.yaml", kind="url", location="https://x.org/rdf.yaml").kind
    'url'
    """

    name: str
    source: str
    kind: Literal["rdf", "folder", "zip", "url", "index"]
    location: str


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _rdf_in_folder(folder: Path) -> Path | None:
    for file_name in RDF_NAMES:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def _index_too_large(spec: str, max_bytes: int) -> InvalidIndexError:
    return InvalidIndexError(
        f"collection index {spec} is over the size limit of {max_bytes} bytes (max_bytes); pass the zoo's "
        "index.json, or raise max_bytes if you trust this index"
    )


def _fetch_text(url: str, *, max_bytes: int = MAX_INDEX_BYTES) -> str:
    import httpx

    try:
        # streamed, so that a server sending an endless body is cut off at the limit, not held in memory
        with httpx.stream("GET", url, timeout=_INDEX_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _index_too_large(url, max_bytes)
            encoding = response.encoding or "utf-8"
    except httpx.HTTPError as e:
        raise InvalidIndexError(
            f"cannot download collection index {url}: {one_line(e)}; check the URL and your connection, "
            "or pass a local copy of the index"
        ) from e
    return bytes(body).decode(encoding, errors="replace")


def _resolve_entry(raw: str, base: str | Path) -> str:
    if _is_url(raw):
        return raw
    if isinstance(base, str):
        return urljoin(base, raw)
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    if path.is_dir():
        rdf = _rdf_in_folder(path)
        if rdf is not None:
            return str(rdf)
    return str(path)


def _display_name(model_id: str) -> str:
    return model_id.removeprefix(_ZOO_ID_PREFIX)


def read_collection_index(path_or_url: str | Path, *, max_bytes: int = MAX_INDEX_BYTES) -> list[ModelSource]:
    """Read the models listed in a zoo collection index.

    Two shapes are accepted: the current index
    ``{"items": [{"id", "type", "versions": [{"version", "source", ...}]}]}``, where the last
    version is taken as the latest, and the legacy ``collection.json``
    ``{"collection": [{"id", "type", "rdf_source", ...}]}``. Only entries with
    ``type == "model"`` are kept. Relative sources resolve against the index's folder (or URL).

    Parameters
    ----------
    path_or_url : str or Path
        Local path or http(s) URL of the index JSON.
    max_bytes : int, optional
        Largest index read (default 64 MiB); a larger one is refused before it is parsed.

    Returns
    -------
    list of ModelSource
        One per model, of kind ``"index"``, in index order.

    Raises
    ------
    InvalidIndexError
        The index cannot be read, is larger than ``max_bytes``, is not JSON (or nests too deeply to
        parse), or does not have either shape.

    Examples
    --------
    >>> import json, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "index.json"
    >>> _ = p.write_text(json.dumps({"items": [{"id": "bioimage-io/affable-shark", "type": "model",
    ...     "versions": [{"version": "1", "source": "https://x.org/v1/rdf.yaml"},
    ...                  {"version": "2", "source": "https://x.org/v2/rdf.yaml"}]}]}))
    >>> [(s.name, s.location) for s in read_collection_index(p)]
    [('affable-shark', 'https://x.org/v2/rdf.yaml')]
    """
    spec = str(path_or_url)
    base: str | Path
    if _is_url(spec):
        text = _fetch_text(spec, max_bytes=max_bytes)
        base = spec
    else:
        path = Path(spec).expanduser()
        try:
            with path.open("rb") as f:
                raw = f.read(max_bytes + 1)  # never more than the limit in memory
            if len(raw) > max_bytes:
                raise _index_too_large(spec, max_bytes)
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidIndexError(
                f"cannot read collection index {path}: {one_line(getattr(e, 'strerror', None) or e)}; "
                "check the path"
            ) from e
        base = path.resolve().parent
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidIndexError(
            f"collection index {spec} is not valid JSON ({one_line(e)}); pass the zoo's index.json "
            "or a collection.json"
        ) from e
    except RecursionError:  # e.g. a megabyte of '[': json's decoder recurses per nesting level
        raise InvalidIndexError(
            f"collection index {spec} nests JSON arrays or objects too deeply to parse; pass the zoo's index.json "
            "or a collection.json"
        ) from None

    if isinstance(content, dict) and isinstance(content.get("items"), list):
        entries = [(item, _latest_source(item, spec)) for item in content["items"] if _is_model(item, spec)]
    elif isinstance(content, dict) and isinstance(content.get("collection"), list):
        entries = [
            (item, _legacy_source(item, spec)) for item in content["collection"] if _is_model(item, spec)
        ]
    else:
        raise InvalidIndexError(
            f"collection index {spec} has neither an 'items' list (current zoo index) nor a 'collection' "
            "list (legacy collection.json); pass the zoo's index.json"
        )

    sources: list[ModelSource] = []
    for item, raw in entries:
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise InvalidIndexError(
                f"collection index {spec} has a model entry without an 'id' (source {raw!r}); fix the index"
            )
        name = item.get("nickname") if isinstance(item.get("nickname"), str) else None
        sources.append(
            ModelSource(
                name=name or _display_name(model_id),
                source=raw,
                kind="index",
                location=_resolve_entry(raw, base),
            )
        )
    return sources


def _is_model(item: Any, spec: str) -> bool:
    if not isinstance(item, dict):
        raise InvalidIndexError(f"collection index {spec} has an entry that is not an object: {item!r:.80}")
    return item.get("type") == "model"


def _latest_source(item: dict[str, Any], spec: str) -> str:
    versions = item.get("versions")
    if not isinstance(versions, list) or not versions:
        raise InvalidIndexError(
            f"collection index {spec}: model {item.get('id')!r} has no 'versions' list; "
            "fix or update the index"
        )
    latest = versions[-1]
    source = latest.get("source") if isinstance(latest, dict) else None
    if not isinstance(source, str) or not source:
        raise InvalidIndexError(
            f"collection index {spec}: the last version of model {item.get('id')!r} has no 'source'; "
            "fix or update the index"
        )
    return source


def _legacy_source(item: dict[str, Any], spec: str) -> str:
    source = item.get("rdf_source")
    if not isinstance(source, str) or not source:
        raise InvalidIndexError(
            f"collection index {spec}: model {item.get('id')!r} has no 'rdf_source'; fix or update the index"
        )
    return source


def _zip_source(path: Path, spec: str, *, check: bool) -> ModelSource:
    if check:
        check_zip(path)
    return ModelSource(name=path.stem, source=spec, kind="zip", location=str(path.resolve()))


def _extracted(source: ModelSource, extract_dir: Path) -> ModelSource:
    extract_dir.mkdir(parents=True, exist_ok=True)
    # a fresh folder per zip: two packages with the same stem never overwrite each other
    dest = Path(tempfile.mkdtemp(prefix=f"{source.name}-", dir=extract_dir))
    safe_extract_zip(Path(source.location), dest)
    rdf = _rdf_in_folder(dest)
    return replace(source, location=str((rdf or dest).resolve()))


def _folder_of_packages(folder: Path) -> list[ModelSource]:
    found: list[ModelSource] = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            rdf = _rdf_in_folder(child)
            if rdf is not None:
                found.append(
                    ModelSource(
                        name=child.name, source=str(child), kind="folder", location=str(rdf.resolve())
                    )
                )
        elif child.is_file() and child.suffix.lower() == ".zip":
            # Checked when loaded (models.load_model): one bad zip in a zoo folder is one failed model.
            found.append(ModelSource(name=child.stem, source=str(child), kind="zip", location=str(child.resolve())))
    if not found:
        raise InvalidModelError(
            f"no model packages found in {folder}: expected an rdf.yaml or bioimageio.yaml in it, "
            "or subfolders with one, or .zip packages; pass a package folder, a .zip or a folder of packages"
        )
    return found


def _find_one(spec: str | Path, *, check: bool = True) -> list[ModelSource]:
    text = str(spec)
    if isinstance(spec, str) and _is_url(text):
        if PurePosixPath(urlparse(text).path).suffix.lower() == ".json":
            return read_collection_index(text)
        name = PurePosixPath(urlparse(text).path).parent.name or text
        return [ModelSource(name=name, source=text, kind="url", location=text)]

    path = Path(spec).expanduser()
    if not path.exists():
        raise InvalidModelError(f"model source {text} does not exist; pass {_ACCEPTED}")
    if path.is_dir():
        rdf = _rdf_in_folder(path)
        if rdf is not None:
            return [
                ModelSource(name=path.resolve().name, source=text, kind="folder", location=str(rdf.resolve()))
            ]
        return _folder_of_packages(path)
    suffix = path.suffix.lower()
    if is_rdf_name(path.name):
        return [
            ModelSource(
                name=path.resolve().parent.name, source=text, kind="rdf", location=str(path.resolve())
            )
        ]
    if suffix == ".zip":
        return [_zip_source(path, text, check=check)]
    if suffix == ".json":
        return read_collection_index(path)
    raise InvalidModelError(f"cannot use {text} as a model source (unsupported file type); pass {_ACCEPTED}")


def file_sha256(location: str | Path) -> str | None:
    """sha256 of a local package zip or rdf.yaml, None for a URL: lets write-back notice a changed model.

    Examples
    --------
    >>> file_sha256("https://example.com/rdf.yaml") is None
    True
    """
    path = Path(location)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rdf(source: ModelSource) -> dict[str, Any] | None:
    """A local model's RDF as plain data (safe, bounded YAML), or None for a URL or an RDF that cannot be read.

    Used to plan and filter before any model is loaded; a broken package is reported when it is loaded.
    """
    from bioimage_cte.zoo.safe_yaml import DEFAULT_MAX_BYTES, load_untrusted_yaml

    path = Path(source.location)
    try:
        # read as bioimageio.spec reads it, bounded: an alias bomb or oversized RDF is refused here
        # (and reported when the model is loaded), one byte over the limit is enough to tell
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in RDF_NAMES if n in zf.namelist())
                with zf.open(name) as f:
                    raw = f.read(DEFAULT_MAX_BYTES + 1)
        else:
            with path.open("rb") as f:
                raw = f.read(DEFAULT_MAX_BYTES + 1)
        rdf = load_untrusted_yaml(raw, where=f"rdf.yaml of {source.location}")
    except Exception:
        return None
    return rdf if isinstance(rdf, dict) else None


def read_tags(source: ModelSource) -> list[str]:
    """The ``tags`` of a local model's RDF, lower-cased (URLs and unreadable RDFs give ``[]``).

    Parameters
    ----------
    source : ModelSource
        A model found by :func:`find_models`.
    """
    tags = (read_rdf(source) or {}).get("tags", [])
    return [str(t).lower() for t in tags if isinstance(t, str | int)] if isinstance(tags, list) else []


def filter_by_tag(sources: Sequence[ModelSource], tag: str) -> list[ModelSource]:
    """Keep the models whose RDF carries ``tag`` or a variant of it (``nucleus`` for ``nuclei``, see :mod:`.tags`)."""
    from bioimage_cte.zoo.tags import matches_tag

    return [s for s in sources if matches_tag(read_tags(s), tag)]


def mixed_tasks_warning(sources: Sequence[ModelSource]) -> str | None:
    """A warning when the models are made for several tasks (nuclei, cells, ...), else None.

    CTE compares models made for the same task; without ``--tag`` a cell model can rank high on nuclei images.
    """
    from bioimage_cte.zoo.tags import task_groups

    by_task: dict[str, int] = {}
    for source in sources:
        for task in task_groups(read_tags(source)):
            by_task[task] = by_task.get(task, 0) + 1
    if len(by_task) < 2:
        return None
    counts = ", ".join(f"{task} ({n})" for task, n in sorted(by_task.items()))
    return (f"the {len(sources)} models are tagged for several tasks: {counts}; CTE compares models made for the "
            f"same task, so pass --tag, e.g. --tag {max(by_task, key=by_task.get)}")


def missing_sources(specs: Sequence[str | Path]) -> InvalidModelError | None:
    """One error naming every local model source that does not exist (a typo), or None when all exist.

    A mistyped path is the run's error, like a missing image folder: told before anything runs, in one line.

    Examples
    --------
    >>> str(missing_sources(["no/such/zoo", "https://example.org/rdf.yaml"]))[:41]
    'model source no/such/zoo does not exist; '
    """
    missing = [str(s) for s in specs if not (isinstance(s, str) and _is_url(s)) and not Path(s).expanduser().exists()]
    if not missing:
        return None
    what = f"model source {missing[0]} does not exist" if len(missing) == 1 else (
        f"model sources {', '.join(missing)} do not exist")
    return InvalidModelError(f"{what}; check the path, or pass {_ACCEPTED}")


#: At most this many tags are named when a --tag matches no model.
_TAGS_NAMED = 12


def tag_counts(sources: Sequence[ModelSource]) -> dict[str, int]:
    """How many of the models carry each tag, most common first (ties by name)."""
    counts: dict[str, int] = {}
    for source in sources:
        for tag in dict.fromkeys(read_tags(source)):
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def missing_tag_error(sources: Sequence[ModelSource], tag: str, where: str) -> InvalidModelError:
    """The error for a ``--tag`` no model has: the variants tried and the tags the models do have, with counts.

    Examples
    --------
    >>> str(missing_tag_error([], "nucleii", "zoo/"))
    "no model in zoo/ has the tag 'nucleii' (nor any of nucleii, nucleiis); none of its 0 models has tags: drop --tag"
    """
    from bioimage_cte.zoo.tags import tag_variants

    variants = ", ".join(sorted(tag_variants(tag)))
    head = f"no model in {where} has the tag {tag!r} (nor any of {variants})"
    counts = tag_counts(sources)
    if not counts:
        return InvalidModelError(f"{head}; none of its {len(sources)} models has tags: drop --tag")
    named = ", ".join(f"{t} ({n})" for t, n in list(counts.items())[:_TAGS_NAMED])
    more = f" and {len(counts) - _TAGS_NAMED} more" if len(counts) > _TAGS_NAMED else ""
    return InvalidModelError(f"{head}; its {len(sources)} models have the tags {named}{more}: pass one of them "
                             "with --tag, or drop --tag")


def select_models(specs: Sequence[str | Path], *, tag: str | None = None) -> list[ModelSource]:
    """Find the models of ``specs`` (:func:`find_models`) and keep those with ``tag``, if given.

    Raises
    ------
    InvalidModelError
        No model was found, or none has the tag.
    """
    sources = find_models(specs)
    where = " ".join(str(s) for s in specs)
    if not sources:
        raise InvalidModelError(f"no model found in {where}; pass rdf.yaml files, packages or folders of packages")
    if tag:
        tagged = filter_by_tag(sources, tag)
        if not tagged:
            raise missing_tag_error(sources, tag, where)
        sources = tagged
    return sources


@dataclass(frozen=True)
class SourceProblem:
    """A model source that names no usable package (missing path, unreadable index, ...), and why."""

    name: str
    source: str
    reason: str


def locate_models(specs: Sequence[str | Path]) -> tuple[list[ModelSource], list[SourceProblem]]:
    """:func:`find_models`, with a bad spec recorded as a :class:`SourceProblem` instead of stopping the others.

    Zips are not checked here: :func:`bioimage_cte.zoo.rdf_checks.precheck_package` checks every package, with the
    run's limits, before any model loads. A location found twice is kept once.
    """
    sources: list[ModelSource] = []
    problems: list[SourceProblem] = []
    seen: set[str] = set()
    for spec in specs:
        try:
            found = _find_one(spec, check=False)
        except BioimageCteError as e:
            text = str(spec)
            name = PurePosixPath(urlparse(text).path).stem if _is_url(text) else Path(text).stem
            problems.append(SourceProblem(name or text, text, one_line(e)))
            continue
        for source in found:
            if source.location not in seen:
                seen.add(source.location)
                sources.append(source)
    return sources, problems


def find_models(specs: Sequence[str | Path], *, extract_dir: Path | None = None) -> list[ModelSource]:
    """Work out where each model is, from what the user passed on the command line.

    Each spec may be an ``rdf.yaml``/``bioimageio.yaml`` file, a package folder holding one,
    a ``.zip`` package (checked with :func:`check_zip`), a folder of packages (every direct
    subfolder with an rdf.yaml and every direct ``*.zip``, sorted by name), a collection
    index ``.json`` (local or http(s), see :func:`read_collection_index`) or an http(s) URL
    of an rdf.yaml or zip, which is passed through without downloading.

    Parameters
    ----------
    specs : sequence of str or Path
        What the user passed; strings starting with ``http://`` or ``https://`` are URLs.
    extract_dir : Path, optional
        If given, local zips are extracted with :func:`safe_extract_zip` into a new
        subfolder of it and ``location`` points to the extracted rdf.yaml. By default
        ``location`` is the zip itself, which bioimageio reads directly.

    Returns
    -------
    list of ModelSource
        In the order of ``specs``; a location found twice is kept once, at its first place.

    Raises
    ------
    InvalidModelError
        A spec does not exist, is of an unsupported type, or is a folder without packages.
    UnsafeArchiveError
        A local zip holds unsafe entries.
    InvalidIndexError
        A collection index cannot be read.

    Examples
    --------
    >>> [s.kind for s in find_models(["https://example.org/models/unet/rdf.yaml"])]
    ['url']
    """
    if isinstance(specs, str | Path):
        raise InvalidModelError(
            f"find_models expects a list of model sources, got the single value {specs}; wrap it in a list"
        )
    sources: list[ModelSource] = []
    seen: set[str] = set()
    for spec in specs:
        for source in _find_one(spec):
            if source.location not in seen:
                seen.add(source.location)
                sources.append(source)
    if extract_dir is not None:
        sources = [_extracted(s, Path(extract_dir)) if s.kind == "zip" else s for s in sources]
    return sources
