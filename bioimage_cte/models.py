"""Loading and checking model packages before anything of theirs runs.

:func:`load_model` reads one package (local folder, zip or URL), rejects what bioimage-cte
cannot rank (no segmentation model, an unsupported input) with a one-line reason and fix, and
pre-parses the RDF with the safe YAML loader so that a hostile RDF never reaches
bioimageio.spec's parser. The helpers at the end word a failed weights load (damaged file
versus refused pickle) for the user.

This module imports bioimageio.spec (not torch); :mod:`bioimage_cte.predictors` runs the models.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bioimageio.spec.model import v0_5

from bioimage_cte.errors import InvalidModelError

# bioimageio.spec parses every rdf.yaml with one shared YAML parser: two threads loading at once corrupt each other.
_LOAD_LOCK = threading.Lock()


def load_model(location: str, *, perform_io_checks: bool = True) -> v0_5.ModelDescr:
    """Load and check a model description: a v0.5 (or convertible) 2D or 3D segmentation model.

    Raises :class:`~bioimage_cte.errors.InvalidModelError` naming ``location`` and the fix.
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_4

    from bioimage_cte.sources import check_zip

    if location.lower().endswith(".zip") and Path(location).is_file():
        check_zip(Path(location))  # path traversal, symlinks, oversized entries: before bioimageio opens it
    _precheck_rdf(location)
    try:
        with _LOAD_LOCK:
            descr = load_description(location, perform_io_checks=perform_io_checks, format_version="latest")
    except Exception as e:  # unreadable YAML, broken zip, missing file: bioimageio raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InvalidModelError(f"{location}: cannot be read as a bioimageio package ({type(e).__name__}: "
                                f"{first}); check that it is a valid rdf.yaml or package zip") from e
    if isinstance(descr, InvalidDescr):
        summary = descr.validation_summary
        first = next((e for d in summary.details for e in d.errors), None)
        reason = f"{'.'.join(map(str, first.loc)) or 'rdf'}: {' '.join(first.msg.split())}" if first else summary.status
        fix = f"check it with 'bioimageio validate-format {location}'"
        if "SHA256 mismatch" in reason:
            fix = "a file was changed or damaged after packaging; get the package again"
        raise InvalidModelError(f"{location}: not a valid bioimageio RDF ({reason}); {fix}")
    if descr.type != "model":
        raise InvalidModelError(f"{location}: RDF of type {descr.type!r}, not a model; pass model packages only")
    if isinstance(descr, v0_4.ModelDescr):
        raise InvalidModelError(f"{location}: model format {descr.format_version} could not be converted to 0.5; "
                                "update it with 'bioimageio update-format'")
    check_segmentation_model(descr, location=location)
    _check_inputs(descr, location)
    return descr


def _read_local_rdf(location: str) -> tuple[str, bytes] | None:
    """(file name, bytes) of a local package's RDF; None for URLs (bioimageio fetches those itself).

    At most one byte more than the YAML size limit is read: enough for the parser to refuse an
    oversized RDF without holding all of it.
    """
    import zipfile

    from bioimage_cte.safe_yaml import DEFAULT_MAX_BYTES
    from bioimage_cte.sources import RDF_NAMES

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


def _precheck_rdf(location: str) -> None:
    """Name the first problem of an RDF that is no model RDF at all, in words a user can act on.

    bioimageio.spec reports broken YAML and RDFs of other types as long validation reports; this
    parses the RDF the same way (safe YAML 1.2 loader: no tags, no code) and says what it is. A
    YAML alias bomb or an oversized RDF raises here, so that bioimageio.spec never parses it.
    """
    from ruyaml.error import MarkedYAMLError

    from bioimage_cte.errors import UnsafeYamlError
    from bioimage_cte.safe_yaml import load_untrusted_yaml

    try:
        found = _read_local_rdf(location)
    except Exception:  # a damaged zip: bioimageio's own error follows
        return
    if found is None:
        return
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
    missing = _missing_files(location, content)
    if missing:
        field, file_name = missing
        raise InvalidModelError(f"{location}: {file_name} is listed in {name} ({field}) but missing from the "
                                "package; get the complete package again")


def _missing_files(location: str, content: dict) -> tuple[str, str] | None:
    """(field, file) of the first relative file the RDF lists that the package lacks."""
    import zipfile

    path = Path(location)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            present = set(zf.namelist())
        exists = present.__contains__
    else:
        exists = lambda name: (path.parent / name).is_file()  # noqa: E731
    for field, value in _sources(content, ()):
        if "://" not in value and not Path(value).is_absolute() and not exists(value.removeprefix("./")):
            return field, value
    return None


def _sources(node: Any, loc: tuple[str, ...], seen: set[int] | None = None) -> Iterator[tuple[str, str]]:
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
                yield from _sources(value, loc + (str(key),), seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _sources(value, loc + (str(i),), seen)


def check_segmentation_model(descr: v0_5.ModelDescr, *, location: str) -> None:
    """Raise unless the model maps one image to a same-sized probability map (a segmentation model).

    The output checked is the one that would be scored (:func:`bioimage_cte.readout.choose_readout`).
    """
    from bioimage_cte.readout import choose_readout

    if len(descr.inputs) != 1:
        raise InvalidModelError(f"{location}: model has {len(descr.inputs)} inputs; bioimage-cte ranks "
                                "single-input segmentation models")
    out = next(o for o in descr.outputs if str(o.id) == choose_readout(descr, name=location).tensor)
    in_axes = {str(a.id) for a in descr.inputs[0].axes}
    out_axes = {str(a.id) for a in out.axes}
    if not {"y", "x"} <= in_axes or not {"y", "x"} <= out_axes:
        raise InvalidModelError(f"{location}: input axes {sorted(in_axes)} / output axes {sorted(out_axes)} "
                                "have no y and x; not an image segmentation model")
    if ("z" in in_axes) != ("z" in out_axes):
        raise InvalidModelError(f"{location}: input axes {sorted(in_axes)} but output {out.id!r} has axes "
                                f"{sorted(out_axes)}; bioimage-cte scores outputs with the input's spatial axes")
    for axis in out.axes:
        if str(axis.id) in ("z", "y", "x") and getattr(axis, "scale", 1.0) not in (1, 1.0):
            raise InvalidModelError(f"{location}: output {out.id!r} axis {axis.id} is rescaled (scale "
                                    f"{axis.scale}); bioimage-cte scores full-resolution probability maps only")
    ops = {type(p).__name__ for p in out.postprocessing}
    tags = {t.lower() for t in descr.tags}
    if not ({"SigmoidDescr", "SoftmaxDescr", "BinarizeDescr"} & ops or any("segmentation" in t for t in tags)):
        raise InvalidModelError(
            f"{location}: output {out.id!r} is neither sigmoid/softmax/binarize-postprocessed nor tagged "
            "'segmentation'; bioimage-cte ranks models whose output is a foreground probability map")


def input_channels(descr: v0_5.ModelDescr) -> int:
    """How many channels the model's input takes (1 without a channel axis)."""
    return next((len(a.channel_names) for a in descr.inputs[0].axes if isinstance(a, v0_5.ChannelAxis)), 1)


def _check_inputs(descr: v0_5.ModelDescr, name: str) -> None:
    """Raise unless the model's input is an image bioimage-cte can feed (checked before the model is loaded).

    2D (``yx``) and 3D (``zyx``) inputs with any number of channels are fed; other axes (time, an
    index) are not.
    """
    others = [str(a.id) for a in descr.inputs[0].axes
              if not isinstance(a, v0_5.BatchAxis | v0_5.ChannelAxis) and str(a.id) not in ("z", "y", "x")]
    if others:
        axes = [str(a.id) for a in descr.inputs[0].axes]
        raise InvalidModelError(f"{name}: input axes {axes} include {', '.join(others)}; bioimage-cte feeds 2D "
                                "(yx) and 3D (zyx) images with channels, not time series or other axes")
    for axis in descr.inputs[0].axes:
        if str(axis.id) in ("z", "y", "x") and not isinstance(axis.size, int | v0_5.ParameterizedSize):
            raise InvalidModelError(f"{name}: input axis {axis.id} takes a size of type {type(axis.size).__name__}; "
                                    "bioimage-cte needs a fixed or parameterized size")


# what torch and zipfile say about a weights file that was cut short or damaged (rather than refused)
_DAMAGE_MARKERS = ("PytorchStreamReader failed", "unexpected EOF", "file might be corrupted", "negative seek value",
                   "truncated", "Ran out of input")


def _raise_if_damaged(e: BaseException, *, name: str, source: Any) -> None:
    """Raise a 'corrupt or truncated' error from ``e`` when loading failed on a damaged weights file."""
    damage = _damaged_weights(e)
    if damage is not None:
        raise InvalidModelError(f"{name}: weights file {source} is corrupt or truncated ({damage}); download the "
                                "package again") from e


def _damaged_weights(e: BaseException) -> str | None:
    """The first line of the error, in ``e``'s chain, showing that a weights file is truncated or damaged; else None.

    bioimageio.core wraps every failure of ``torch.load(weights_only=True)`` in one ValueError, so
    the original error is looked up in the chain, innermost first. A pickle that ``weights_only``
    refuses ("Unsupported global") is not damage: the file is whole, only unsafe.
    """
    import pickle
    import zipfile

    chain: list[BaseException] = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(chain):
        text = str(err)
        if "Unsupported global" in text:
            return None
        if isinstance(err, zipfile.BadZipFile | EOFError) or (
            isinstance(err, RuntimeError | ValueError | pickle.UnpicklingError)
            and any(marker in text for marker in _DAMAGE_MARKERS)
        ):
            return _first_line(err)
    return None


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message``: bioimageio.core's errors run over many lines."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
