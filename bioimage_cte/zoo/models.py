"""Loading and checking model packages before anything of theirs runs.

:func:`load_model` reads one package (local folder, zip or URL), rejects what bioimage-cte
cannot rank (no segmentation model, an unsupported input) with a one-line reason and fix, and
pre-parses the RDF with the safe YAML loader so that a hostile RDF never reaches
bioimageio.spec's parser. The helpers at the end word a failed weights load (damaged file
versus refused pickle) for the user.

This module imports bioimageio.spec (not torch); :mod:`bioimage_cte.predict.factory` builds the predictors.
"""

from __future__ import annotations

import threading
from typing import Any

from bioimageio.spec.model import v0_5

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.zoo.archives import DEFAULT_MAX_ENTRY_BYTES
from bioimage_cte.zoo.readout import choose_readout

# bioimageio.spec parses every rdf.yaml with one shared YAML parser: two threads loading at once corrupt each other.
_LOAD_LOCK = threading.Lock()


def load_model(location: str, *, perform_io_checks: bool = True,
               max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> v0_5.ModelDescr:
    """Load and check a model description: a v0.5 (or convertible) 2D or 3D segmentation model.

    Raises :class:`~bioimage_cte.base.errors.InvalidModelError` naming ``location`` and the fix; ``max_entry_bytes``
    is the largest unpacked member of a package zip (:func:`bioimage_cte.zoo.archives.check_zip`).
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_4

    from bioimage_cte.zoo.rdf_checks import precheck_package

    # path traversal, symlinks, oversized entries, YAML bombs, non-model RDFs: before bioimageio opens it
    precheck_package(location, max_entry_bytes=max_entry_bytes)
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
        if "Object arrays cannot be loaded" in reason:
            files = ", ".join(_object_arrays(location)) or "a test tensor"
            raise InvalidModelError(f"{location}: {files} holds Python objects, not numbers (an .npy that would need "
                                    "pickle to load, refused); save the test tensors as numeric arrays")
        raise InvalidModelError(f"{location}: not a valid bioimageio RDF ({reason}); {fix}")
    if descr.type != "model":
        raise InvalidModelError(f"{location}: RDF of type {descr.type!r}, not a model; pass model packages only")
    if isinstance(descr, v0_4.ModelDescr):
        raise InvalidModelError(f"{location}: model format {descr.format_version} could not be converted to 0.5; "
                                "update it with 'bioimageio update-format'")
    check_segmentation_model(descr, location=location)
    check_inputs(descr, location)
    return descr


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
    """Raise unless the model maps one image to a same-sized probability map (a segmentation model).

    The output checked is the one that would be scored (:func:`bioimage_cte.zoo.readout.choose_readout`).
    """
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


def check_inputs(descr: v0_5.ModelDescr, name: str) -> None:
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
