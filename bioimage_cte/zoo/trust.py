"""Which code shipped with a model package may run.

A bioimageio model package can carry Python code, and bioimageio.core runs it without asking:

- the architecture of ``pytorch_state_dict`` weights, either a ``.py`` file inside the package
  (``ArchitectureFromFileDescr``; bioimageio.core executes the file when it builds the network) or
  a module to import (``ArchitectureFromLibraryDescr``: ``from <import_from> import <callable>``);
- custom pre/postprocessing (``CustomProcessingDescr``), a ``.py`` file executed when the
  prediction pipeline is created, whatever the weights format.

A zoo-wide run touches hundreds of packages written by others, so by default
(:class:`CodePolicy` with ``trust_code=False``) only code the user already has installed runs:

1. a **network class** imported from a module of a **trusted library** (:data:`DEFAULT_TRUSTED_LIBRARIES`,
   extendable) that is installed: the imported object must be a class that subclasses ``torch.nn.Module``
   (checked after import, before anything is called) and its ``kwargs`` plain data naming no file, URL or
   unpickling option, so ``torch.save``, ``torch.load``, ``torch.hub.load`` or any other function of a trusted
   library is refused like package code;
2. an architecture file whose bytes are identical to a module of :mod:`bioimage_cte.demozoo.archs` (the
   demo zoo's UNet, which ships inside each demo package): the installed module is imported
   instead, and the package's copy is never executed;
3. anything else runs only with ``trust_code=True`` (``--trust-code``). Without it, black-box
   prediction uses the package's ``torchscript`` or ``onnx`` weights (graphs, not Python), grey-box
   estimators perturb those weights instead (:mod:`bioimage_cte.zoo.weights`), and a model with custom
   processing code, or without code-free weights, is skipped with the reason.

The checks run on the loaded description, before bioimageio.core imports anything from the package.
Weights are always loaded by bioimageio.core 0.11 with ``torch.load(..., weights_only=True)``
(a pickle that is not a plain state dict is refused without being executed); rdf.yaml files are
parsed with safe YAML loaders; zips are checked before they are read (:func:`bioimage_cte.zoo.sources.check_zip`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bioimage_cte.base.errors import InvalidModelError, UntrustedCodeError

__all__ = [
    "CODE_FREE_WEIGHT_FORMATS",
    "DEFAULT_TRUSTED_LIBRARIES",
    "CodePolicy",
    "blackbox_weights",
    "check_processing_code",
    "greybox_descr",
]

DEFAULT_TRUSTED_LIBRARIES: tuple[str, ...] = (
    "bioimage_cte.demozoo.archs",
    "bioimageio",
    "cellpose",
    "monai",
    "plantseg",
    "pytorch3dunet",
    "stardist",
    "torch",
    "torchvision",
)
"""Import prefixes whose installed modules may provide a ``pytorch_state_dict`` architecture."""

CODE_FREE_WEIGHT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")
"""Weights formats that are serialized graphs, not Python code; the black-box fallback, in this order."""

_TRUST_FIX = "pass --trust-code (trust_code=True) if you trust this package"


class _NotAllowed(Exception):
    """Why some package code may not run (``reason``), and how to allow it (``fix``)."""

    def __init__(self, reason: str, fix: str = _TRUST_FIX) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class CodePolicy:
    """Which package code may run.

    Parameters
    ----------
    trust_code : bool
        Run any code the package ships (its architecture file, custom processing).
    trusted_libraries : tuple of str
        Import prefixes (``"monai"``, ``"bioimage_cte.demozoo.archs"``) an architecture may be imported from.

    Examples
    --------
    >>> CodePolicy().allows_module("monai.networks.nets")
    True
    >>> CodePolicy().allows_module("monaix.nets")
    False
    >>> CodePolicy(trusted_libraries=("mylab",)).allows_module("mylab.unet")
    True
    """

    trust_code: bool = False
    trusted_libraries: tuple[str, ...] = DEFAULT_TRUSTED_LIBRARIES

    @classmethod
    def with_libraries(cls, extra: Sequence[str] = (), *, trust_code: bool = False) -> CodePolicy:
        """The default allowlist plus ``extra`` import prefixes."""
        return cls(trust_code=trust_code, trusted_libraries=DEFAULT_TRUSTED_LIBRARIES + tuple(extra))

    def allows_module(self, module: str) -> bool:
        """Whether ``module`` lies inside one of the trusted libraries."""
        return any(module == lib or module.startswith(lib + ".") for lib in self.trusted_libraries)


@lru_cache(maxsize=1)
def _known_architecture_files() -> dict[str, str]:
    """sha256 of each :mod:`bioimage_cte.demozoo.archs` module's source -> its module name."""
    folder = Path(__file__).parents[1] / "demozoo" / "archs"
    return {hashlib.sha256(p.read_bytes()).hexdigest(): f"bioimage_cte.demozoo.archs.{p.stem}"
            for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}


def _library_architecture(arch, policy: CodePolicy, name: str):
    module = str(arch.import_from)
    if not (policy.trust_code or policy.allows_module(module)):
        top = module.split(".")[0]
        raise _NotAllowed(f"its architecture is imported from {module!r}, which is not a trusted library",
                          f"{_TRUST_FIX}, or trust the library with --trust-library {top}")
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:  # find_spec of the top level imports nothing
        raise InvalidModelError(f"{name}: its architecture is imported from {module!r}, but {top!r} is not "
                                f"installed; install it to use this model's pytorch_state_dict weights")
    if not policy.trust_code:
        # a trusted library provides network classes, not every function it has (torch.save, torch.load, ...)
        _check_plain_kwargs(arch, f"{module}.{arch.callable}")
        _check_module_class(module, str(arch.callable), name)
    return arch


#: architecture kwargs that name a file, a URL or how to unpickle: refused for library architectures
_FILE_KWARGS = frozenset({"f", "file", "filename", "fname", "path", "filepath", "file_path", "url", "uri",
                          "checkpoint", "checkpoint_path", "ckpt", "weights_path", "weights_only", "pickle_module",
                          "map_location", "repo_or_dir", "model_dir", "cache_dir", "hub_dir", "source"})
_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".h5", ".hdf5", ".onnx", ".bin",
                  ".zip", ".tar", ".gz", ".yaml", ".yml", ".json", ".txt", ".py", ".so")


def _looks_like_a_file(value: str) -> bool:
    text = value.strip().lower()
    return ("://" in text or text.startswith(("/", "~", ".")) or "/" in text or "\\" in text
            or text.endswith(_FILE_SUFFIXES))


def _check_plain_kwargs(arch, what: str) -> None:
    """Raise _NotAllowed unless the kwargs are plain data that names no file, URL or unpickling option."""

    def check(value, where: str) -> None:
        if isinstance(value, bool | int | float) or value is None:
            return
        if isinstance(value, str):
            if _looks_like_a_file(value):
                raise _NotAllowed(f"its architecture {what} is given a file or URL ({where}={value!r}), which a "
                                  "trusted library's network class does not need")
            return
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
            return
        if isinstance(value, dict):
            for key, item in value.items():
                check(key, f"{where} key")
                check(item, f"{where}.{key}")
            return
        raise _NotAllowed(f"its architecture {what} is given {where} of type {type(value).__name__}; only "
                          "numbers, strings, booleans and lists or mappings of them are accepted")

    for key, value in dict(arch.kwargs or {}).items():
        if str(key).lower() in _FILE_KWARGS:
            raise _NotAllowed(f"its architecture {what} is given {key}={value!r}, which names a file, a URL or how "
                              "to unpickle; a trusted library's network class does not need it")
        check(value, str(key))


def _check_module_class(module: str, name_in_module: str, name: str) -> None:
    """Raise _NotAllowed unless ``module.name_in_module`` is a ``torch.nn.Module`` class (imported, never called)."""
    import torch

    try:
        obj = getattr(importlib.import_module(module), name_in_module)
    except (ImportError, AttributeError) as e:
        raise InvalidModelError(f"{name}: its architecture {module}.{name_in_module} cannot be imported "
                                f"({type(e).__name__}: {e}); check the package's architecture entry") from e
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        kind = "a class that is not a torch.nn.Module" if isinstance(obj, type) else \
            f"a {type(obj).__name__}, not a torch.nn.Module class"
        raise _NotAllowed(f"its architecture {module}.{name_in_module} is {kind}; only network classes of a "
                          "trusted library run without --trust-code")


def _file_architecture(arch, policy: CodePolicy, name: str):
    from bioimageio.spec.model.v0_5 import ArchitectureFromLibraryDescr

    source = str(arch.source)
    try:
        data = arch.get_reader().read()
    except Exception as e:  # missing file in a folder or zip, unreachable URL
        raise InvalidModelError(f"{name}: cannot read its architecture file {source} ({type(e).__name__}); "
                                "the package is incomplete, get it again") from e
    module = _known_architecture_files().get(hashlib.sha256(data).hexdigest())
    if module is not None:
        # the same bytes as an installed module: import that module, never the package's copy
        return ArchitectureFromLibraryDescr(import_from=module, callable=arch.callable, kwargs=arch.kwargs)
    if policy.trust_code:
        return arch
    raise _NotAllowed(f"its pytorch_state_dict architecture is Python code shipped in the package "
                      f"({source}:{arch.callable}), which does not run by default")


def _allowed_architecture(descr, policy: CodePolicy, name: str):
    """The architecture to build the network from, or raise _NotAllowed."""
    from bioimageio.spec.model.v0_5 import ArchitectureFromFileDescr, ArchitectureFromLibraryDescr

    arch = descr.weights.pytorch_state_dict.architecture
    if isinstance(arch, ArchitectureFromLibraryDescr):
        return _library_architecture(arch, policy, name)
    if isinstance(arch, ArchitectureFromFileDescr):
        return _file_architecture(arch, policy, name)
    raise InvalidModelError(f"{name}: unknown architecture description {type(arch).__name__}")


def _with_architecture(descr, arch):
    if arch is descr.weights.pytorch_state_dict.architecture:
        return descr
    # model_copy: the description stays as loaded (validated); only the architecture node is swapped
    weights = descr.weights.pytorch_state_dict.model_copy(update={"architecture": arch})
    return descr.model_copy(update={"weights": descr.weights.model_copy(update={"pytorch_state_dict": weights})})


def check_processing_code(descr, policy: CodePolicy, *, name: str) -> None:
    """Raise :class:`UntrustedCodeError` if the model's pre/postprocessing is package code that may not run."""
    from bioimageio.spec.model.v0_5 import CustomProcessingDescr

    if policy.trust_code:
        return
    steps = [p for t in descr.inputs for p in t.preprocessing] + [p for t in descr.outputs for p in t.postprocessing]
    for step in steps:
        if isinstance(step, CustomProcessingDescr):
            raise UntrustedCodeError(f"{name}: skipped: its {step.id} processing is Python code shipped in the "
                                     f"package ({step.source}:{step.callable}), which does not run by default; "
                                     f"{_TRUST_FIX}")


def greybox_descr(descr, policy: CodePolicy, *, name: str):
    """The description to build the torch network from under ``policy``.

    Returns ``descr``, or a copy whose architecture file is replaced by the identical installed
    module. Raises :class:`UntrustedCodeError` when the architecture is package code that may not run.
    """
    check_processing_code(descr, policy, name=name)
    try:
        return _with_architecture(descr, _allowed_architecture(descr, policy, name))
    except _NotAllowed as e:
        raise UntrustedCodeError(f"{name}: skipped by grey-box estimators: {e.reason}; {e.fix} (black-box "
                                 "estimators such as cte-input use its torchscript/onnx weights)") from None


def available_weight_formats(descr) -> list[str]:
    """Weights formats present in a model description."""
    return [name for name, entry in descr.weights if entry is not None]


def blackbox_weights(descr, weight_format: str | None, policy: CodePolicy, *, name: str):
    """The description and weights format for black-box prediction under ``policy``.

    ``pytorch_state_dict`` weights whose architecture may not run are replaced by the first of
    :data:`CODE_FREE_WEIGHT_FORMATS` the package has.

    Returns
    -------
    descr, weight_format
        ``weight_format`` None means bioimageio.core's own priority order (only when that is safe).

    Raises
    ------
    UntrustedCodeError
        The model's code may not run and it has no code-free weights (or ``pytorch_state_dict``
        was asked for explicitly).
    """
    check_processing_code(descr, policy, name=name)
    if descr.weights.pytorch_state_dict is None or weight_format not in (None, "pytorch_state_dict"):
        return descr, weight_format
    try:
        return _with_architecture(descr, _allowed_architecture(descr, policy, name)), weight_format
    except _NotAllowed as e:
        fallback = next((f for f in CODE_FREE_WEIGHT_FORMATS if getattr(descr.weights, f) is not None), None)
        if weight_format is None and fallback is not None:
            return descr, fallback
        why = "--weight-format pytorch_state_dict was asked for" if weight_format else \
            "it has no torchscript or onnx weights to use instead"
        raise UntrustedCodeError(f"{name}: skipped: {e.reason}, and {why}; {e.fix}") from None
