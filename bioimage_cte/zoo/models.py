"""Loading and checking model packages before anything of theirs runs.

:func:`load_model` reads one package (local folder, zip or URL), rejects what bioimage-cte
cannot rank (no segmentation model, an unsupported input) with a one-line reason and fix, and
pre-parses the RDF with the safe YAML loader so that a hostile RDF never reaches
bioimageio.spec's parser. The helpers at the end word a failed weights load (damaged file
versus refused pickle) for the user.

This module imports bioimageio.spec (not torch); :mod:`bioimage_cte.predict.factory` builds the predictors.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bioimageio.spec.model import v0_5

from bioimage_cte.base.errors import InvalidModelError, NotSegmentationModelError, UnsupportedModelError
from bioimage_cte.zoo.archives import DEFAULT_MAX_ENTRY_BYTES
from bioimage_cte.zoo.readout import choose_readout

# bioimageio.spec parses every rdf.yaml with one shared YAML parser: two threads loading at once corrupt each other.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class FormatUse:
    """Which format version of a model description ran, and how it got there (recorded in the ranking JSON).

    Attributes
    ----------
    written : str
        The ``format_version`` the package's RDF declares.
    used : str
        The format version of the description that ran (bioimage-cte predicts from format 0.5 descriptions).
    converted : bool
        Whether bioimageio.spec converted the RDF from ``written`` to ``used``.
    repair : str, optional
        A known gap of the 0.4 to 0.5 conversion that was bridged first, in words (None: converted as written).
    """

    written: str
    used: str
    converted: bool
    repair: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"written": self.written, "used": self.used, "converted": self.converted, "repair": self.repair}


def load_model(location: str, *, perform_io_checks: bool = True,
               max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> v0_5.ModelDescr:
    """Load and check a model description: a v0.5 (or convertible) 2D or 3D segmentation model.

    Raises :class:`~bioimage_cte.base.errors.InvalidModelError` naming ``location`` and the fix; ``max_entry_bytes``
    is the largest unpacked member of a package zip (:func:`bioimage_cte.zoo.archives.check_zip`).
    """
    return load_model_and_format(location, perform_io_checks=perform_io_checks, max_entry_bytes=max_entry_bytes)[0]


def load_model_and_format(location: str, *, perform_io_checks: bool = True,
                          max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> tuple[v0_5.ModelDescr, FormatUse]:
    """:func:`load_model`, and which format version ran (:class:`FormatUse`).

    A format 0.4 RDF is converted to the latest format, as bioimageio.core does; where that conversion has a
    known gap (:func:`repair_v04`: a halo on an output of fixed size) the gap is bridged in the RDF's content
    first, instead of refusing a model bioimageio.core runs. Nothing is fetched to load a local package: authors'
    ``github_user`` names are not looked up on GitHub (metadata bioimage-cte does not use), and weights a package
    keeps on a server are not downloaded until they run; every local file's sha256 is still checked.
    """
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec.model import v0_4

    from bioimage_cte.zoo.rdf_checks import precheck_package

    # path traversal, symlinks, oversized entries, YAML bombs, non-model RDFs: before bioimageio opens it
    content = precheck_package(location, max_entry_bytes=max_entry_bytes) or {}
    written = str(content.get("format_version", "?"))
    repair = None
    try:
        with _LOAD_LOCK, _github_users_unchecked(content):
            io_checks = perform_io_checks and not _checked_without_downloads(location, content)
            # the links of a local package (git_repo, cite urls) are not requested: metadata, and no network needed
            links = {u: None for u in _urls(content)} if io_checks and not _is_url(location) else None
            descr = _build(location, io_checks, None, links)
            if isinstance(descr, InvalidDescr) and written.startswith("0.4."):
                fixed, repair = repair_v04(content)
                if repair is not None:
                    descr = _build(location, io_checks, fixed, links)
    except Exception as e:  # unreadable YAML, broken zip, missing file: bioimageio raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InvalidModelError(f"{location}: cannot be read as a bioimageio package ({type(e).__name__}: "
                                f"{first}); check that it is a valid rdf.yaml or package zip") from e
    if isinstance(descr, InvalidDescr):
        _raise_invalid(descr, location)
    if descr.type != "model":
        raise InvalidModelError(f"{location}: RDF of type {descr.type!r}, not a model; pass model packages only")
    if isinstance(descr, v0_4.ModelDescr):
        raise InvalidModelError(f"{location}: model format {descr.format_version} could not be converted to 0.5; "
                                "update it with 'bioimageio update-format'")
    check_segmentation_model(descr, location=location)
    check_inputs(descr, location)
    used = str(descr.format_version)
    return descr, FormatUse(written, used, written.split(".")[:2] != used.split(".")[:2], repair)


def _checked_without_downloads(location: str, content: dict) -> bool:
    """Whether a local package names some files by URL; then its local files are checked against their sha256 here.

    bioimageio.spec downloads every remote file of a description to hash it when io checks are on: a local
    package that keeps one weights format on a server (the spec's ``unet2d_nuclei_broad`` keeps its state dict
    there, its onnx and torchscript weights in the package) could not be read offline, and every load would
    download weights that may never run. Such a package's local files are hashed here instead, and bioimageio.spec
    reads it without io checks; a remote file is downloaded (and checked against its sha256 by bioimageio) only if
    its weights are chosen to run.

    Raises
    ------
    InvalidModelError
        A local file does not match its sha256.
    """
    import hashlib

    if location.startswith(("http://", "https://")):
        return False
    pairs = list(_sourced_hashes(content))
    if not any(s.startswith(("http://", "https://")) for s, _ in pairs):
        return False
    for source, sha in pairs:
        if sha is None or source.startswith(("http://", "https://")):
            continue
        data = _package_file(location, source)
        if data is not None and hashlib.sha256(data).hexdigest() != sha:
            raise InvalidModelError(f"{location}: {source} does not match its sha256 in the RDF; a file was "
                                    "changed or damaged after packaging; get the package again")
    return True


def _sourced_hashes(node: Any) -> Iterator[tuple[str, str | None]]:
    """(source, sha256 or None) of every file the RDF names."""
    if isinstance(node, dict):
        if isinstance(node.get("source"), str):
            sha = node.get("sha256")
            yield node["source"], sha if isinstance(sha, str) else None
        for key, value in node.items():
            if key != "config":
                yield from _sourced_hashes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _sourced_hashes(item)


def _package_file(location: str, source: str) -> bytes | None:
    """The bytes of a file of a local package (folder or zip), None when it is not there."""
    import zipfile
    from pathlib import Path

    path = Path(location)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return zf.read(source) if source in zf.namelist() else None
    file = (path if path.is_dir() else path.parent) / source
    return file.read_bytes() if file.is_file() else None


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _urls(node: Any) -> Iterator[str]:
    """Every http(s) URL among the RDF's values."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _urls(item)
    elif isinstance(node, str) and _is_url(node):
        yield node


def _build(location: str, perform_io_checks: bool, content: dict | None, links: dict[str, None] | None) -> Any:
    """The description at ``location``, converted to the latest format; from ``content`` instead of its RDF if given.

    ``links`` are URLs bioimageio.spec takes as known (``known_files``): not requested.
    """
    from bioimageio.spec import build_description, get_validation_context, load_description

    if content is None:
        return load_description(location, perform_io_checks=perform_io_checks, format_version="latest",
                                known_files=links or None)
    # the repaired content is validated against the package's own files, as load_description validates the RDF
    from bioimageio.spec._internal.io_utils import open_bioimageio_yaml

    opened = open_bioimageio_yaml(location)
    context = get_validation_context().replace(root=opened.original_root, file_name=opened.original_file_name,
                                               original_source_name=opened.original_source_name,
                                               perform_io_checks=perform_io_checks,
                                               known_files=links or {})
    return build_description(content, context=context, format_version="latest")


def repair_v04(content: dict) -> tuple[dict, str | None]:
    """A format 0.4 RDF's content with the known gaps of its conversion to 0.5 bridged, and what was done.

    The one gap bridged: an output with a halo and a fixed ``shape`` equal to an input's fixed shape (the spec's
    ``unet2d_fixed_shape``). Format 0.5 forbids a halo on a fixed-size output axis, so the conversion fails,
    while bioimageio.core runs the 0.4 model. The output is the input's size, so it is written as a reference to
    that input (scale 1, offset 0): the same sizes, which format 0.5 allows a halo on. Returns ``(content, None)``
    when nothing applies.

    Examples
    --------
    >>> rdf = {"inputs": [{"name": "raw", "axes": "bcyx", "shape": [1, 1, 64, 64]}],
    ...        "outputs": [{"name": "out", "axes": "bcyx", "shape": [1, 1, 64, 64], "halo": [0, 0, 8, 8]}]}
    >>> fixed, why = repair_v04(rdf)
    >>> fixed["outputs"][0]["shape"]
    {'reference_tensor': 'raw', 'scale': [1.0, 1.0, 1.0, 1.0], 'offset': [0, 0, 0, 0]}
    >>> why.split(" (")[0]
    "output 'out': fixed shape [1, 1, 64, 64] with a halo given as the size of input 'raw'"
    """
    import copy

    fixed = copy.deepcopy(content)
    done = []
    inputs = [i for i in fixed.get("inputs") or [] if isinstance(i, dict)]
    for out in fixed.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("shape"), list) or not any(out.get("halo") or []):
            continue
        same = next((i for i in inputs if i.get("shape") == out["shape"] and i.get("axes") == out.get("axes")), None)
        if same is None:
            continue
        shape = list(out["shape"])
        out["shape"] = {"reference_tensor": same.get("name"), "scale": [1.0] * len(shape), "offset": [0] * len(shape)}
        done.append(f"output {out.get('name')!r}: fixed shape {shape} with a halo given as the size of input "
                    f"{same.get('name')!r} (format 0.5 allows no halo on a fixed size)")
    return (fixed, "; ".join(done)) if done else (content, None)


@contextlib.contextmanager
def _github_users_unchecked(content: dict) -> Iterator[None]:
    """Within this block bioimageio.spec takes the RDF's ``github_user`` names as known (no GitHub lookup).

    bioimageio.spec checks every author's and maintainer's GitHub account online when io checks are on (its
    ``KNOWN_GITHUB_USERS`` skips the lookup), so a package with a ``github_user`` cannot be loaded offline.
    The names are metadata bioimage-cte does not use; the package's files are still checked by sha256.
    """
    try:
        from bioimageio.spec._internal.constants import KNOWN_GITHUB_USERS
    except ImportError:  # a later bioimageio.spec: its own lookup runs
        yield
        return
    names = {str(n).lower() for n in _github_users(content)} - KNOWN_GITHUB_USERS
    KNOWN_GITHUB_USERS.update(names)
    try:
        yield
    finally:
        KNOWN_GITHUB_USERS.difference_update(names)


def _github_users(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "github_user" and isinstance(value, str):
                yield value
            else:
                yield from _github_users(value)
    elif isinstance(node, list):
        for item in node:
            yield from _github_users(item)


def _raise_invalid(descr: Any, location: str) -> None:
    summary = descr.validation_summary
    first = next((e for d in summary.details for e in d.errors), None)
    reason = f"{'.'.join(map(str, first.loc)) or 'rdf'}: {' '.join(first.msg.split())}" if first else summary.status
    fix = f"check it with 'bioimageio validate-format {location}'"
    if "SHA256 mismatch" in reason:
        fix = "a file was changed or damaged after packaging; get the package again"
    if "Object arrays cannot be loaded" in reason:
        files = ", ".join(_object_arrays(location)) or "a test tensor"
        raise InvalidModelError(f"{location}: {files} holds Python objects, not numbers (an .npy that would need "
                                "pickle to load, refused); save the test tensors as numeric arrays")
    raise InvalidModelError(f"{location}: not a valid bioimageio RDF ({reason}); {fix}")


def _object_arrays(location: str) -> list[str]:
    """The package's .npy files whose header declares Python objects (read from the header alone, never unpickled)."""
    import zipfile
    from pathlib import Path

    import numpy as np

    def has_objects(f) -> bool:
        try:
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            _, _, dtype = read[np.lib.format.read_magic(f)](f)
        except Exception:  # not an .npy, or a version without a public reader: another problem, named elsewhere
            return False
        return bool(dtype.hasobject)

    path = Path(location)
    found: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".npy"):
                    with zf.open(name) as f:
                        if has_objects(f):
                            found.append(name)
    else:
        folder = path if path.is_dir() else path.parent
        for npy in sorted(folder.glob("*.npy")):
            with npy.open("rb") as f:
                if has_objects(f):
                    found.append(npy.name)
    return found


def check_segmentation_model(descr: v0_5.ModelDescr, *, location: str) -> None:
    """Raise unless the model maps an image to a probability map of it (a segmentation model; the map may have
    another resolution).

    The output checked is the one that would be scored (:func:`bioimage_cte.zoo.readout.choose_readout`).
    """
    # several inputs are fed from the image's channels (bioimage_cte.zoo.inputs): checked when the predictor is made
    out = next(o for o in descr.outputs if str(o.id) == choose_readout(descr, name=location).tensor)
    in_axes = {str(a.id) for a in descr.inputs[0].axes}
    out_axes = {str(a.id) for a in out.axes}
    if not {"y", "x"} <= in_axes or not {"y", "x"} <= out_axes:
        raise NotSegmentationModelError(f"{location}: input axes {sorted(in_axes)} / output axes "
                                        f"{sorted(out_axes)} have no y and x; not an image segmentation model")
    if ("z" in in_axes) != ("z" in out_axes):
        raise UnsupportedModelError(f"{location}: input axes {sorted(in_axes)} but output {out.id!r} has axes "
                                    f"{sorted(out_axes)}; bioimage-cte scores outputs with the input's spatial axes")
    # an output at another resolution (an axis with a scale, or an offset size) is scored on its own grid
    ops = {type(p).__name__ for p in out.postprocessing}
    tags = {t.lower() for t in descr.tags}
    if not ({"SigmoidDescr", "SoftmaxDescr", "BinarizeDescr"} & ops or any("segmentation" in t for t in tags)):
        raise NotSegmentationModelError(
            f"{location}: output {out.id!r} is neither sigmoid/softmax/binarize-postprocessed nor tagged "
            "'segmentation'; bioimage-cte ranks models whose output is a foreground probability map")


def input_channels(descr: v0_5.ModelDescr) -> int:
    """How many image channels the model takes: over all its inputs (1 for an input without a channel axis)."""
    return sum(next((len(a.channel_names) for a in t.axes if isinstance(a, v0_5.ChannelAxis)), 1)
               for t in descr.inputs)


def check_inputs(descr: v0_5.ModelDescr, name: str) -> None:
    """Raise unless the model's inputs are images bioimage-cte can feed (checked before the model is loaded).

    2D (``yx``) and 3D (``zyx``) inputs with any number of channels are fed; other axes (time, an
    index) are not. Several inputs must share their spatial axes (each is fed channels of the same image).
    """
    spatial = None
    for tensor in descr.inputs:
        others = [str(a.id) for a in tensor.axes
                  if not isinstance(a, v0_5.BatchAxis | v0_5.ChannelAxis) and str(a.id) not in ("z", "y", "x")]
        if others:
            axes = [str(a.id) for a in tensor.axes]
            raise UnsupportedModelError(f"{name}: input axes {axes} include {', '.join(others)}; bioimage-cte feeds "
                                        "2D (yx) and 3D (zyx) images with channels, not time series or other axes")
        for axis in tensor.axes:
            if str(axis.id) in ("z", "y", "x") and not isinstance(axis.size, int | v0_5.ParameterizedSize):
                raise UnsupportedModelError(f"{name}: input axis {axis.id} takes a size of type "
                                            f"{type(axis.size).__name__}; bioimage-cte needs a fixed or parameterized "
                                            "size")
        mine = {str(a.id): a.size for a in tensor.axes if str(a.id) in ("z", "y", "x")}
        if spatial is not None and mine != spatial:
            raise UnsupportedModelError(f"{name}: its inputs take different spatial sizes ({spatial} and {mine}); "
                                        "bioimage-cte feeds every input from the channels of one image")
        spatial = mine


# what torch and zipfile say about a weights file that was cut short or damaged (rather than refused)
_DAMAGE_MARKERS = ("PytorchStreamReader failed", "unexpected EOF", "file might be corrupted", "negative seek value",
                   "truncated", "Ran out of input", "Unsupported operand")


def raise_if_damaged(e: BaseException, *, name: str, source: Any) -> None:
    """Raise a one-line error from ``e`` when loading failed on a damaged weights file or an unsafe pickle."""
    if _unsafe_pickle(e):
        raise InvalidModelError(f"{name}: weights file {source} is an unsafe pickle (loading it would run code it "
                                "carries): torch.load with weights_only=True refused it, nothing in it ran; save "
                                "only net.state_dict() as the weights") from e
    damage = _damaged_weights(e)
    if damage is not None:
        raise InvalidModelError(f"{name}: weights file {source} is corrupt or truncated ({damage}); download the "
                                "package again") from e


def _chain(e: BaseException | None) -> list[BaseException]:
    """``e``, its causes and contexts, and the members of exception groups among them, outermost first."""
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        err = todo.pop(0)
        if err is None or any(err is s for s in seen):
            continue
        seen.append(err)
        todo += [err.__cause__, err.__context__, *getattr(err, "exceptions", ())]
    return seen


def _unsafe_pickle(e: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a pickle that would import or call something."""
    return any("Unsupported global" in str(err) for err in _chain(e))


def _damaged_weights(e: BaseException) -> str | None:
    """The first line of the error, in ``e``'s chain, showing that a weights file is truncated or damaged; else None.

    bioimageio.core wraps every failure of ``torch.load(weights_only=True)`` in one ValueError (and the failures
    of every adapter it tried in an ExceptionGroup), so the original error is looked up in the chain, innermost
    first.
    """
    import pickle
    import zipfile

    for err in reversed(_chain(e)):
        text = str(err)
        if isinstance(err, zipfile.BadZipFile | EOFError) or (
            isinstance(err, RuntimeError | ValueError | pickle.UnpicklingError)
            and any(marker in text for marker in _DAMAGE_MARKERS)
        ):
            # weights_only's unpickler on bytes that are no pickle: its own line says which byte, not the first
            garbage = next((line.strip() for line in text.splitlines() if "Unsupported operand" in line), None)
            return f"{type(err).__name__}: {garbage}" if garbage else first_line(err)
    return None


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``: bioimageio.core's errors run over many lines."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
