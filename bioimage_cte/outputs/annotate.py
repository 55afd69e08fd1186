"""Writing a model's transferability to a target back onto its model card.

A ranking says how well each model is expected to transfer to one target dataset. This module
records that, per model, under ``config.bioimage_cte.transferability`` of the model's RDF
(``rdf.yaml``): a list with one entry per target, so several targets accumulate side by side
and annotating the same target again replaces only that target's entry. ``config`` is the
RDF's free-form section; the spec asks tools to nest their data under a key named after the
tool, and ``config.bioimageio`` is reserved for bioimage.io itself.

Packages are read and rewritten by :mod:`bioimage_cte.zoo.packages`: a zip or a folder's ``rdf.yaml`` is
replaced atomically (the old one kept as ``.bak``) or written to ``output``, every other file byte for byte the
same, so an interrupted run leaves either the old or the new package, never half of one. This module decides
what the new RDF says.

A package that changed after it was ranked is refused, except for changes made by this module:
each entry records the sha256 the package file had when it was ranked (``package_sha256``) and a
fingerprint of the RDF's content without the transferability entries (``content_sha256``), so a
package annotated for target A still accepts the score of a ranking on target B made before.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bioimage_cte.base.errors import (
    AnnotationError,
    BioimageCteError,
    InvalidImageError,
    InvalidModelError,
    PackageChangedError,
    WriteError,
    one_line,
)
from bioimage_cte.base.version import __version__
from bioimage_cte.predict.images import dataset_fingerprint
from bioimage_cte.run.ranking import read_ranking
from bioimage_cte.zoo.packages import (
    locate_package,
    open_package,
    output_destination,
    parse_rdf,
    rdf_location,
    read_rdf,
    read_rdf_text,
    rewrite_package,
    update_rdf,
)
from bioimage_cte.zoo.sources import file_sha256

# locate_package, rdf_location and read_rdf are re-exported: callers found them here before bioimage_cte.zoo.packages
__all__ = [
    "TransferabilityEntry",
    "annotate_from_ranking",
    "annotate_package",
    "entries_from_ranking",
    "locate_package",
    "rdf_location",
    "read_rdf",
    "read_transferability",
    "score_settings",
]

#: The tool's namespace in the RDF's ``config`` and the list of entries inside it.
NAMESPACE = "bioimage_cte"
ENTRIES_KEY = "transferability"

# Ranking settings that describe the run, not the score: a local image path does not belong on a public model card.
_RUN_ONLY_SETTINGS = frozenset({"estimator", "bioimage_cte_version", "images", "n_images", "device"})


@dataclass(frozen=True)
class TransferabilityEntry:
    """One model's estimated transferability to one target, as written onto its model card.

    Attributes
    ----------
    target : str
        Name of the target dataset (what the user called it).
    target_fingerprint : str
        :func:`~bioimage_cte.predict.images.dataset_fingerprint` of the target's images: the same name with other
        images is
        another target.
    estimator : str
        Estimator name, e.g. ``"cte-dropout"``.
    settings : dict
        Everything that changes the score (estimator parameters, seed, task, ...).
    score : float or None
        The model's score (higher is better); ``None`` when it predicted no foreground at all.
    rank : int
        Place in the ranking, 1 is best.
    n_models : int
        Number of models ranked.
    n_images : int
        Number of target images the model was scored on.
    date : str
        When the entry was made, ISO 8601 in UTC.
    bioimage_cte_version : str
        Version of bioimage-cte that computed the score.
    """

    target: str
    target_fingerprint: str
    estimator: str
    settings: dict[str, Any]
    score: float | None
    rank: int
    n_models: int
    n_images: int
    date: str
    bioimage_cte_version: str

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready values, in field order."""
        return asdict(self)


def score_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a ranking JSON that change the score, without the run's paths, device and version.

    Examples
    --------
    >>> score_settings({"estimator": "cte-dropout", "strength": 0.2, "images": "/home/me/data", "layer": None})
    {'strength': 0.2}
    """
    return {k: v for k, v in settings.items() if k not in _RUN_ONLY_SETTINGS and v is not None}


def entries_from_ranking(
    ranking_json: Mapping[str, Any],
    *,
    target: str,
    fingerprint: str,
    date: str | None = None,
) -> dict[str, tuple[TransferabilityEntry, str | None]]:
    """One entry per ranked model of a ranking JSON (as ``bioimage-cte rank --output`` writes it).

    Models that failed (the ranking's ``failures``) have no score and get no entry.

    Parameters
    ----------
    ranking_json : mapping
        :meth:`bioimage_cte.run.ranking.Ranking.to_json_dict` output, possibly with extra settings.
    target : str
        Name of the target dataset.
    fingerprint : str
        :func:`~bioimage_cte.predict.images.dataset_fingerprint` of the target images.
    date : str, optional
        ISO 8601 date to record; default: now, in UTC.

    Returns
    -------
    dict
        Model source (as given to ``rank``) -> (entry, sha256 of the package file at ranking
        time or ``None`` when the ranking did not record it).

    Raises
    ------
    BioimageCteError
        The JSON is not a ranking, or ``target`` is empty.

    Examples
    --------
    >>> ranking = {"models": [{"name": "m", "source": "m.zip", "score": 0.9, "rank": 1, "n_images": 4,
    ...                        "sha256": "ab"}], "settings": {"estimator": "cte-dropout", "strength": 0.2}}
    >>> entry, sha = entries_from_ranking(ranking, target="t", fingerprint="f", date="2025-01-01")["m.zip"]
    >>> entry.rank, entry.settings, sha
    (1, {'strength': 0.2}, 'ab')
    """
    if not isinstance(target, str) or not target.strip():
        raise BioimageCteError(f"target name {target!r} is empty; name the target dataset, e.g. --target dsb2018")
    models = ranking_json.get("models") if isinstance(ranking_json, Mapping) else None
    settings = ranking_json.get("settings") if isinstance(ranking_json, Mapping) else None
    if not isinstance(models, list) or not isinstance(settings, Mapping) or "estimator" not in settings:
        raise BioimageCteError("not a ranking: expected 'models' and 'settings.estimator' as written by "
                               "'bioimage-cte rank --output'; pass a ranking JSON")
    when = date or datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    kept = score_settings(settings)
    version = str(settings.get("bioimage_cte_version") or __version__)
    entries: dict[str, tuple[TransferabilityEntry, str | None]] = {}
    for model in models:
        score = model.get("score")
        entry = TransferabilityEntry(
            target=target,
            target_fingerprint=fingerprint,
            estimator=str(settings["estimator"]),
            settings=copy.deepcopy(kept),
            score=None if score is None else float(score),
            rank=int(model["rank"]),
            n_models=len(models),
            n_images=int(model.get("n_images", 0)),
            date=when,
            bioimage_cte_version=version,
        )
        entries[str(model["source"])] = (entry, model.get("sha256"))
    return entries


def _check_model(data: Mapping[str, Any], where: str) -> None:
    if data.get("type") != "model":
        raise InvalidModelError(f"{where}: RDF of type {data.get('type')!r}, not a model; annotate model packages "
                                "only")


def _entries(data: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    config = data.get("config") or {}
    if not isinstance(config, Mapping):
        raise InvalidModelError(f"{where}: 'config' is a {type(config).__name__}, not a mapping; fix the rdf.yaml")
    ours = config.get(NAMESPACE) or {}
    if not isinstance(ours, Mapping):
        raise InvalidModelError(f"{where}: 'config.{NAMESPACE}' is a {type(ours).__name__}, not a mapping; fix "
                                "the rdf.yaml")
    entries = ours.get(ENTRIES_KEY) or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise InvalidModelError(f"{where}: 'config.{NAMESPACE}.{ENTRIES_KEY}' is not a list of entries; remove it "
                                "and annotate again")
    return [dict(e) for e in entries]


def _without_entries(data: Mapping[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(dict(data))
    ours = (stripped.get("config") or {}).get(NAMESPACE)
    if isinstance(ours, dict):
        ours.pop(ENTRIES_KEY, None)
    return stripped


def _content_sha256(data: Mapping[str, Any]) -> str:
    """Fingerprint of an RDF's values apart from the transferability entries (key order ignored)."""
    canonical = json.dumps(_without_entries(data), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_transferability(location: Path) -> list[dict[str, Any]]:
    """The transferability entries of a model package (folder, rdf.yaml or zip), one per target.

    Parameters
    ----------
    location : Path
        A model package folder, its rdf.yaml or a package .zip.

    Returns
    -------
    list of dict
        ``config.bioimage_cte.transferability``; empty if the package has none.
    """
    pkg = open_package(Path(location))
    return _entries(parse_rdf(read_rdf_text(pkg), pkg.where), pkg.where)


def _render(data: dict[str, Any], record: dict[str, Any], *, where: str, text: str) -> bytes:
    """The RDF ``text`` with ``record`` put in its target's place, checked to change nothing else.

    Written with the round-trip parser it was read with: the authors' comments, key order and layout stay.
    """
    new = copy.deepcopy(data)
    entries = _entries(new, where)
    position = next((i for i, e in enumerate(entries) if e.get("target") == record["target"]), None)
    if position is None:
        entries.append(record)
    else:
        entries[position] = record
    if not isinstance(new.get("config"), dict):
        new["config"] = {}
    if not isinstance(new["config"].get(NAMESPACE), dict):
        new["config"][NAMESPACE] = {}
    new["config"][NAMESPACE][ENTRIES_KEY] = entries
    text = update_rdf(text, ["config", NAMESPACE, ENTRIES_KEY], entries)
    # Read back the way bioimageio.spec reads it: every value but ours must have survived the round trip.
    again = parse_rdf(text, where)
    if _without_entries(again) != _without_entries(data) or _entries(again, where) != entries:
        raise BioimageCteError(f"{where}: rewriting the rdf.yaml would change values other than "
                               f"config.{NAMESPACE}; the package was left untouched, please report this RDF")
    return text.encode("utf-8")


def annotate_package(
    location: Path,
    entry: TransferabilityEntry,
    *,
    expected_sha256: str | None = None,
    output: Path | None = None,
    backup: bool = True,
) -> Path:
    """Write one transferability entry onto a model package's rdf.yaml.

    The entry goes into the list ``config.bioimage_cte.transferability``, replacing an entry for
    the same target name and keeping the others.

    The RDF is edited as plain data, not through bioimageio's pydantic models: loading and
    saving a description would normalise values, fill in defaults and may rewrite or re-hash
    files, whereas editing the data changes nothing but our list, so every other file of the
    package and every sha256 the RDF lists stay valid. The data is read as YAML 1.2 with
    ruyaml, as bioimageio.spec reads it (PyYAML reads YAML 1.1, where ``no`` means false and
    ``1e-6`` is a string), and written with PyYAML's ``safe_dump`` in the original key order,
    quoting strings YAML 1.2 would read as numbers. Before anything is written, the new text is
    read back and must equal the old data apart from our list. Comments and the layout of the
    YAML are not kept.

    Parameters
    ----------
    location : Path
        A model package folder, its rdf.yaml (or bioimageio.yaml) or a package .zip.
    entry : TransferabilityEntry
        What to write (see :func:`entries_from_ranking`).
    expected_sha256 : str, optional
        sha256 of the package file (the zip, or the rdf.yaml of a folder) when it was ranked.
        If given, a package that changed since is refused, unless the only change is earlier
        transferability entries written by this function.
    output : Path, optional
        Folder to write the annotated package to, under the package's own name, leaving the
        original untouched. A package already there from an earlier annotation of the same model
        gets the new entry added; anything else there is refused. Default: annotate in place.
    backup : bool
        When annotating in place, keep the previous file as ``<name>.bak`` (``.bak.1``, ``.bak.2``,
        ... if that exists).

    Returns
    -------
    Path
        The written package: the .zip, or the rdf.yaml of a folder package.

    Raises
    ------
    InvalidModelError
        Not a model package, corrupt zip, unreadable or invalid rdf.yaml, or an RDF whose
        ``type`` is not ``model``.
    PackageChangedError
        ``expected_sha256`` does not match the package any more.
    WriteError
        The destination cannot be written. In every error case the package is unchanged.
    """
    pkg = open_package(Path(location))
    where = pkg.where
    text = read_rdf_text(pkg)
    data = parse_rdf(text, where)
    _check_model(data, where)
    content = _content_sha256(data)
    current = file_sha256(pkg.checksum_file)
    ours = [e for e in _entries(data, where) if e.get("content_sha256") == content]
    if expected_sha256 is not None and current != expected_sha256:
        if not any(e.get("package_sha256") == expected_sha256 for e in ours):
            raise PackageChangedError(f"{pkg.checksum_file} changed since it was ranked (sha256 {current[:12]}... "
                                      f"instead of {expected_sha256[:12]}...); rank again")
    package_sha = expected_sha256 or next((e["package_sha256"] for e in ours if e.get("package_sha256")), current)
    record = {**entry.to_dict(), "package_sha256": package_sha, "content_sha256": content}

    base, base_data, in_place = pkg, data, output is None
    if output is not None:
        try:
            Path(output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create output folder {output}: {e.strerror or e}; choose a writable "
                             "folder") from e
        dest = output_destination(pkg, Path(output))
        if dest.exists():
            base = open_package(dest)
            base_data = parse_rdf(read_rdf_text(base), base.where)
            if base.kind != pkg.kind or _content_sha256(base_data) != content:
                raise WriteError(f"{dest} already exists and is not an annotated copy of {pkg.path}; remove it or "
                                 "choose another output folder")
            in_place = True  # our own earlier copy: add to it, no backup of a copy
    base_text = text if base is pkg else read_rdf_text(base)
    rdf = _render(base_data, record, where=where, text=base_text)

    target = base.path if in_place else dest
    try:
        return rewrite_package(base, rdf, None if in_place else dest, backup=backup and output is None)
    except OSError as e:
        raise WriteError(f"cannot write {target}: {e.strerror or one_line(e)}; choose a writable output folder "
                         "or check the package's permissions") from e


# --- from a ranking ---------------------------------------------------------------------------------------------


def annotate_from_ranking(
    ranking_json_path: Path,
    *,
    target: str,
    images: Sequence[Path],
    output: Path | None = None,
    backup: bool = True,
) -> list[Path]:
    """Annotate every ranked model of a ranking JSON with its transferability to ``target``.

    Every model is tried; a model that cannot be annotated (moved, changed since it was ranked,
    read-only, a URL, ...) does not stop the others. Failures are collected and raised together
    at the end as one :class:`~bioimage_cte.base.errors.AnnotationError`, whose ``written`` lists the
    packages that were annotated and ``failures`` maps each failed source to its reason.

    Parameters
    ----------
    ranking_json_path : Path
        A ranking written by ``bioimage-cte rank --output``. Model sources that are relative
        paths are looked up from the current folder, then from the JSON's folder.
    target : str
        Name of the target dataset, e.g. ``"dsb2018"``.
    images : sequence of Path
        The target images the ranking was made on (fingerprinted into each entry).
    output : Path, optional
        Folder to write annotated copies to; default: annotate the packages in place.
    backup : bool
        Keep ``.bak`` copies of packages annotated in place.

    Returns
    -------
    list of Path
        The annotated packages (zip, or rdf.yaml of a folder), in ranking order.

    Raises
    ------
    BioimageCteError
        The ranking cannot be read, or the images do not match it (checked before any write).
    AnnotationError
        One or more models could not be annotated (the others were).
    """
    path = Path(ranking_json_path)
    ranking = read_ranking(path)
    paths = [Path(p) for p in images]
    n_ranked = ranking.get("settings", {}).get("n_images")
    if isinstance(n_ranked, int) and n_ranked != len(paths):
        raise InvalidImageError(f"{path} was ranked on {n_ranked} images but {len(paths)} were given; pass the same "
                                "--images as to 'bioimage-cte rank'")
    entries = entries_from_ranking(ranking, target=target, fingerprint=dataset_fingerprint(paths))
    written: list[Path] = []
    failures: dict[str, str] = {}
    claimed: dict[Path, str] = {}
    for source, (entry, sha256) in entries.items():
        try:
            location = locate_package(source, base=path.parent.resolve())
            if output is not None:
                dest = output_destination(open_package(location), Path(output)).resolve()
                if dest in claimed:
                    raise WriteError(f"{source} and {claimed[dest]} would both be written to {dest}; annotate them "
                                     "into different output folders")
                claimed[dest] = source
            written.append(annotate_package(location, entry, expected_sha256=sha256, output=output, backup=backup))
        except Exception as e:  # one model's problem must not stop the others; all are reported at the end
            reason = str(e) if isinstance(e, BioimageCteError) else f"{type(e).__name__}: {e}"
            failures[source] = one_line(reason)
    if failures:
        listed = "; ".join(f"{s}: {r}" for s, r in failures.items())
        raise AnnotationError(f"annotated {len(written)} of {len(entries)} models from {path}; failed: {listed}",
                              written=written, failures=failures)
    return written
