"""Per-model reports for the BioImage Model Zoo collection, from one or more rankings.

:func:`zoo_tool_report` / :func:`write_zoo_reports`: one JSON per model version in the shape of the collection's
per-tool compatibility report (``status``, ``score`` in [0, 1], ``error``, ``details``, ``badge``, ``links``), laid
out as the collection publishes them: ``reports/<model id>/<version>/reports/bioimage-cte_<tool version>.json``. A
zoo maintainer can publish these next to the other tools' reports without touching any model. What is written is
meant for publication: paths are relative to the zoo given, never the maintainer's folders (:func:`publishable`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import numpy as np

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.fileutils import write_atomic
from bioimage_cte.base.version import __version__
from bioimage_cte.outputs.annotate import score_settings
from bioimage_cte.zoo.packages import locate_package, read_rdf

__all__ = ["TOOL_NAME", "merge_tool_reports", "publishable", "write_zoo_reports", "zoo_tool_report"]

#: The tool name in report file names; the collection splits ``<tool>_<version>`` at the underscore.
TOOL_NAME = "bioimage-cte"
_TOOL_VERSION = re.compile(r"^[a-z0-9.-]+$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ZOO_ID_PREFIX = "bioimage-io/"


def _unit_score(score: float, rank: int, n_models: int) -> float:
    # CTE scores are consistencies in [0, 1]; other estimators (e.g. negative entropy) are not, and for them the
    # rank is the only comparable quantity.
    if 0.0 <= score <= 1.0:
        return float(score)
    return 1.0 if n_models <= 1 else (n_models - rank) / (n_models - 1)


def _badge(label: str, rank: int, n_models: int, url: str) -> dict[str, str]:
    third = rank / max(n_models, 1)
    color = "brightgreen" if third <= 1 / 3 else "yellow" if third <= 2 / 3 else "orange"
    message = quote(label.removeprefix("CTE ").replace("-", "--"), safe="")
    return {"icon": f"https://img.shields.io/badge/CTE-{message}-{color}", "label": label, "url": url}


def zoo_tool_report(
    score: Mapping[str, Any],
    *,
    target: str,
    n_models: int,
    estimator: str,
    settings: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    url: str | None = None,
    links: Sequence[str] = (),
) -> dict[str, Any]:
    """One model's result on one target, as a collection per-tool report (a JSON-ready dict).

    Parameters
    ----------
    score : mapping
        One entry of a ranking JSON's ``models`` (name, score, rank, n_images, note, ...) or of
        its ``failures`` (name, stage, reason).
    target : str
        Name of the target dataset.
    n_models : int
        Number of models ranked.
    estimator : str
        Estimator name.
    settings : mapping, optional
        Settings that change the score (see :func:`bioimage_cte.outputs.annotate.score_settings`).
    model_id : str, optional
        The model's zoo id, for the default badge link; default: the model's name.
    url : str, optional
        Where the badge links to; default: the model's page on bioimage.io.
    links : sequence of str
        Other bioimage.io resources the model should link to (the collection's ``links``).

    Returns
    -------
    dict
        ``status`` is ``passed`` for a scored model, ``failed`` for a model that could not be
        run or predicted no foreground (score 0, with ``error``), and ``not-applicable`` when
        the estimator cannot run on this kind of model (e.g. grey-box dropout without
        ``pytorch_state_dict`` weights). ``score`` is the CTE score, which lies in [0, 1];
        an estimator whose scores fall outside [0, 1] is reported by rank instead,
        ``(n - rank) / (n - 1)``. ``details[target]`` keeps the raw score and rank.

    Examples
    --------
    >>> r = zoo_tool_report({"name": "m", "score": 0.8, "rank": 2, "n_images": 4}, target="dsb",
    ...                     n_models=5, estimator="cte-dropout", settings={"p": 0.2})
    >>> r["status"], r["score"], r["badge"]["label"]
    ('passed', 0.8, 'CTE rank 2/5')
    """
    name = str(score.get("name", ""))
    link = url or f"https://bioimage.io/#/?id={quote(model_id or name, safe='')}"
    detail: dict[str, Any] = {"score": None, "rank": None, "n_models": n_models, "n_images": score.get("n_images"),
                              "estimator": estimator, "settings": dict(settings or {})}
    value = score.get("score")
    if "reason" in score or value is None or not math.isfinite(float(value)):
        error = str(score.get("reason") or score.get("note") or "no score")
        applicable = "reason" not in score or score.get("stage") in (None, "predict")
        detail["error"] = error
        return {"status": "failed" if applicable else "not-applicable", "score": 0.0, "error": error,
                "details": {target: detail}, "badge": None, "links": list(links)}
    rank = int(score["rank"])
    detail.update(score=float(value), rank=rank)
    label = f"CTE rank {rank}/{n_models}"
    return {"status": "passed", "score": _unit_score(float(value), rank, n_models), "error": None,
            "details": {target: detail}, "badge": _badge(label, rank, n_models, link), "links": list(links)}


def merge_tool_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One report for a model from its reports on several targets.

    ``details`` holds every target. The model ``passed`` if it passed on any target, is
    ``not-applicable`` if it was on every target, and ``failed`` otherwise. ``score`` is the
    mean over the targets where the estimator applies (a failed target counts 0); the badge
    shows the best rank.

    Examples
    --------
    >>> a = zoo_tool_report({"name": "m", "score": 0.8, "rank": 2}, target="a", n_models=4, estimator="e")
    >>> b = zoo_tool_report({"name": "m", "score": 0.6, "rank": 1}, target="b", n_models=4, estimator="e")
    >>> merged = merge_tool_reports([a, b])
    >>> sorted(merged["details"]), round(merged["score"], 2), merged["badge"]["label"]
    (['a', 'b'], 0.7, 'CTE best rank 1/4 (2 targets)')
    """
    if not reports:
        raise ValueError("no reports to merge; pass at least one report")
    if len(reports) == 1:
        return dict(reports[0])
    details: dict[str, Any] = {}
    for report in reports:
        details.update(report["details"])
    statuses = [r["status"] for r in reports]
    applicable = [r for r in reports if r["status"] != "not-applicable"]
    status = "passed" if "passed" in statuses else "failed" if applicable else "not-applicable"
    errors = [f"{t}: {d['error']}" for t, d in details.items() if d.get("error")]
    passed = [(r, t, d) for r in reports if r["status"] == "passed" for t, d in r["details"].items()]
    badge = None
    if passed:
        best, _, d = min(passed, key=lambda x: x[2]["rank"] / x[2]["n_models"])
        label = f"CTE best rank {d['rank']}/{d['n_models']} ({len(reports)} targets)"
        badge = _badge(label, d["rank"], d["n_models"], best["badge"]["url"])
    links = list(dict.fromkeys(link for r in reports for link in r.get("links", [])))
    score = float(np.mean([r["score"] for r in applicable])) if applicable else 0.0
    return {"status": status, "score": score, "error": "; ".join(errors) or None, "details": details,
            "badge": badge, "links": links}


def _identity(source: str, name: str) -> tuple[str, str]:
    """(model id, version) of a ranked model: the RDF's ``id``/``version``, else the package name and "1"."""
    if source.startswith(("http://", "https://")):
        # a collection source: https://<hypha>/bioimage-io/artifacts/<id>/files/rdf.yaml?version=<v>
        parsed = urlparse(source)
        parts = parsed.path.strip("/").split("/")
        version = parse_qs(parsed.query).get("version", ["1"])[0]
        if "artifacts" in parts and parts.index("artifacts") + 1 < len(parts):
            return parts[parts.index("artifacts") + 1], version
        return name, "1"
    try:
        path = locate_package(source)
        rdf = read_rdf(path)
    except BioimageCteError:
        return name, "1"
    stem = path.stem if path.suffix.lower() == ".zip" else (path if path.is_dir() else path.parent).name
    model_id = str(rdf.get("id") or stem).removeprefix(_ZOO_ID_PREFIX)
    return model_id, str(rdf.get("version") or "1")


def _safe_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "model"


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode()


def write_zoo_reports(
    rankings: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
    *,
    tool_version: str = __version__,
) -> list[Path]:
    """Write per-model collection reports for one or more rankings, and the rankings themselves.

    Layout (as the collection's ``reports/`` folder)::

        out_dir/reports/<model id>/<version>/reports/bioimage-cte_<tool_version>.json
        out_dir/rankings/<target>.json

    A model ranked on several targets gets one report with every target in ``details`` (see
    :func:`merge_tool_reports`). The model id and version come from the RDF's ``id`` and
    ``version``, else the package name and ``"1"``; for a collection URL, from the URL.

    Parameters
    ----------
    rankings : mapping
        Target name -> ranking JSON (as written by ``bioimage-cte rank --output``).
    out_dir : Path
        Folder to write into.
    tool_version : str
        Version in the report file name: lower-case letters, digits, dots and dashes (the
        collection splits ``<tool>_<version>`` at the underscore, so none is allowed).

    Returns
    -------
    list of Path
        Every file written, reports first.

    Raises
    ------
    BioimageCteError
        A bad ``tool_version`` or target name, or a ranking without models (checked before
        anything is written).
    WriteError
        ``out_dir`` cannot be written.
    """
    if not _TOOL_VERSION.match(tool_version):
        raise BioimageCteError(f"tool version {tool_version!r} is not allowed in a zoo report name; use lower-case "
                               "letters, digits, dots and dashes, e.g. 0.1.0")
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for target, ranking in rankings.items():
        if not _TARGET_NAME.match(target):
            raise BioimageCteError(f"target name {target!r} cannot be a file name; use letters, digits, '.', '_' "
                                   "and '-', e.g. dsb2018")
        models, failures = ranking.get("models"), ranking.get("failures", [])
        settings = ranking.get("settings") or {}
        if not isinstance(models, list) or "estimator" not in settings:
            raise BioimageCteError(f"ranking for target {target!r} has no 'models' or 'settings.estimator'; pass "
                                   "rankings written by 'bioimage-cte rank --output'")
        kept = score_settings(settings)
        for entry in [*models, *failures]:
            model_id, version = _identity(str(entry.get("source", "")), str(entry.get("name", "model")))
            report = zoo_tool_report(entry, target=target, n_models=len(models), estimator=settings["estimator"],
                                     settings=kept, model_id=model_id)
            by_model.setdefault((model_id, version), []).append(report)
    out_dir = Path(out_dir)
    root = _zoo_root(rankings)
    written = []
    for (model_id, version), reports in sorted(by_model.items()):
        path = (out_dir / "reports" / _safe_part(model_id) / _safe_part(version) / "reports"
                / f"{TOOL_NAME}_{tool_version}.json")
        written.append(write_atomic(path, _json_bytes(publishable(merge_tool_reports(reports), root))))
    for target, ranking in rankings.items():
        written.append(write_atomic(out_dir / "rankings" / f"{target}.json", _json_bytes(publishable(ranking, root))))
    return written


# an absolute local path's folders: not after a word character, ':' or '/' (so no part of a URL)
_LOCAL_FOLDERS = re.compile(r"(?<![\w:/.~-])/(?:[^\s/:;,'\"()\[\]]+/)+")


def _zoo_root(rankings: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The zoo given: the deepest folder that holds more than half of the local packages the rankings name, or None.

    Not the common folder of all of them: one package from elsewhere (a zoo ID's download in the cache, a folder
    in /tmp) would make that ``/home/me`` or ``/tmp`` and publish the rest of the maintainer's layout. Packages
    outside the zoo keep their file name only.

    Examples
    --------
    >>> _zoo_root({"t": {"models": [{"source": "/data/zoo/a.zip"}, {"source": "/data/zoo/sub/b.zip"},
    ...                             {"source": "/home/me/.cache/c.zip"}]}})
    '/data/zoo'
    """
    folders = []
    for ranking in rankings.values():
        for entry in [*(ranking.get("models") or []), *(ranking.get("failures") or [])]:
            source = str(entry.get("source", "")) if isinstance(entry, Mapping) else ""
            if source.startswith("/"):
                folders.append(Path(source).parent)
    holding = Counter(folder for path in folders for folder in (path, *path.parents))
    majority = [folder for folder, n in holding.items() if 2 * n > len(folders)]
    return str(max(majority, key=lambda folder: len(folder.parts))) if majority else None


def publishable(value: Any, root: str | None) -> Any:
    """``value`` (a report or ranking) with local paths made relative to the zoo ``root``; other local folders
    dropped, so nothing published shows where the maintainer keeps files.

    Examples
    --------
    >>> publishable({"reason": "/home/me/zoo/a.zip: 3D model; see /home/me/notes/x.txt"}, "/home/me/zoo")
    {'reason': 'a.zip: 3D model; see x.txt'}
    """
    if isinstance(value, str):
        if root and root != "/":
            value = value.replace(root.rstrip("/") + "/", "")
        return _LOCAL_FOLDERS.sub("", value)
    if isinstance(value, Mapping):
        return {k: publishable(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [publishable(v, root) for v in value]
    return value
