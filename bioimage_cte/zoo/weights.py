"""Which weights each model runs with, and why (recorded per model in the ranking JSON).

How each weights format is run, and what it needs:

- ``pytorch_state_dict``: grey-box by a forward hook on the torch network
  (:mod:`bioimage_cte.predict.torch_greybox`); its architecture code must be allowed
  (:mod:`bioimage_cte.zoo.trust`);
- ``onnx``: grey-box by a graph rewritten with a channel-mask input (:mod:`bioimage_cte.predict.onnx_greybox`);
  extra ``[onnx]``;
- ``torchscript``: grey-box after an export to ONNX (the same module), extra ``[onnx]``;
  black-box with torch alone;
- ``tensorflow_saved_model_bundle``, ``keras_hdf5``: black-box only, through bioimageio.core's TensorFlow and
  Keras adapters; extra ``[tensorflow]``.

For grey-box estimators :func:`greybox_weights` takes the state dict when its architecture may
run (the user's own decision through :class:`~bioimage_cte.zoo.trust.CodePolicy`), and otherwise the
first of onnx, torchscript that can be perturbed without any package code. ``--weight-format``
names the one format to use. Black-box prediction keeps :func:`bioimage_cte.zoo.trust.blackbox_weights`
and checks here that the chosen format's runtime is installed (:func:`check_blackbox_runtime`).
:func:`choose_weights` makes the choice for either access; the predictor factory
(:func:`bioimage_cte.predict.factory.make_predictor`) builds the one adapter for it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from bioimage_cte.base.errors import InvalidModelError, UntrustedCodeError
from bioimage_cte.zoo.trust import (
    CodePolicy,
    _NotAllowed,
    available_weight_formats,
    blackbox_weights,
    check_processing_code,
)

__all__ = ["GREYBOX_FORMATS", "TENSORFLOW_FORMATS", "WeightChoice", "adapter_format", "blackbox_ran_as",
           "check_blackbox_runtime", "choose_weights", "greybox_weights", "missing_runtime"]

#: formats a grey-box estimator can perturb, in the order they are preferred
GREYBOX_FORMATS: tuple[str, ...] = ("pytorch_state_dict", "onnx", "torchscript")
#: formats that need TensorFlow (bioimageio.core's TensorFlow and Keras adapters); black-box only
TENSORFLOW_FORMATS: tuple[str, ...] = ("tensorflow_saved_model_bundle", "keras_hdf5")

_EXTRA = {"onnx": "onnx", "torchscript": "onnx", "tensorflow_saved_model_bundle": "tensorflow",
          "keras_hdf5": "tensorflow"}
_MODULES = {"onnx": ("onnx", "onnxruntime"), "tensorflow": ("tensorflow",)}


@dataclass(frozen=True)
class WeightChoice:
    """The weights one model runs with: format, grey-box or black-box access, and the reason for the choice."""

    format: str
    access: str
    reason: str
    descr: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, str]:
        return {"format": self.format, "access": self.access, "reason": self.reason}


def _installed(module: str) -> bool:
    """Whether a top-level module is installed (find_spec imports nothing)."""
    return importlib.util.find_spec(module) is not None


def missing_runtime(weight_format: str, *, greybox: bool = False) -> str | None:
    """What must be installed to run ``weight_format`` (grey-box or black-box) that is not; None if nothing.

    Examples
    --------
    >>> missing_runtime("pytorch_state_dict") is None
    True
    """
    if weight_format == "torchscript" and not greybox:
        return None
    extra = _EXTRA.get(weight_format)
    if extra is None:
        return None
    missing = [m for m in _MODULES[extra] if not _installed(m)]
    if not missing:
        return None
    return f"{' and '.join(missing)} not installed: pip install 'bioimage-cte[{extra}]'"


def _state_dict_reason(descr, policy: CodePolicy, name: str):
    """(description to build from, why it may run) or raise _NotAllowed / InvalidModelError."""
    from bioimageio.spec.model.v0_5 import ArchitectureFromLibraryDescr

    from bioimage_cte.zoo.trust import _allowed_architecture, _with_architecture

    original = descr.weights.pytorch_state_dict.architecture
    arch = _allowed_architecture(descr, policy, name)
    if arch is not original:
        why = f"its architecture file is the installed module {arch.import_from}"
    elif isinstance(arch, ArchitectureFromLibraryDescr) and policy.allows_module(str(arch.import_from)):
        why = f"its architecture comes from the trusted library {arch.import_from}"
    else:
        why = "its architecture is package code, allowed by --trust-code"
    return _with_architecture(descr, arch), why


def greybox_weights(descr, policy: CodePolicy, *, name: str, weight_format: str | None = None) -> WeightChoice:
    """The weights a grey-box estimator perturbs, and why.

    Parameters
    ----------
    descr : ModelDescr
        A loaded model description.
    policy : CodePolicy
        Which package code may run.
    name : str
        Display name for messages.
    weight_format : str, optional
        Use only this format (``--weight-format``).

    Raises
    ------
    UntrustedCodeError
        The only grey-box way needs package code the policy does not allow (stage ``skipped``).
    InvalidModelError
        No format present can be perturbed here (stage ``estimator``); the message names each reason.
    """
    check_processing_code(descr, policy, name=name)
    present = available_weight_formats(descr)
    order = [weight_format] if weight_format else [f for f in GREYBOX_FORMATS if f in present]
    reasons: list[str] = []
    untrusted: _NotAllowed | None = None
    for fmt in order:
        if fmt not in present:
            reasons.append(f"it has no {fmt} weights (it has {', '.join(present)})")
        elif fmt not in GREYBOX_FORMATS:
            reasons.append(f"{fmt} weights run black-box only")
        elif fmt == "pytorch_state_dict":
            try:
                built, why = _state_dict_reason(descr, policy, name)
            except _NotAllowed as e:
                untrusted = e
                reasons.append(f"{e.reason} ({e.fix})")
                continue
            except InvalidModelError as e:
                reasons.append(str(e).removeprefix(f"{name}: "))
                continue
            return WeightChoice(fmt, "grey-box", why, built)
        elif (missing := missing_runtime(fmt, greybox=True)) is not None:
            reasons.append(f"{fmt} grey-box needs {missing}")
        else:
            why = "asked for with --weight-format" if weight_format else \
                f"{fmt} needs no package code, and {'; '.join(reasons)}" if reasons else \
                f"{fmt} needs no package code (the package has no pytorch_state_dict weights)"
            return WeightChoice(fmt, "grey-box", why, descr)
    if not order:
        reasons.append(f"it has only {', '.join(present)} weights, which run black-box only")
    if untrusted is not None and all(r.startswith(untrusted.reason) or "grey-box needs" in r for r in reasons):
        raise UntrustedCodeError(f"{name}: skipped by grey-box estimators: {'; '.join(reasons)} (black-box "
                                 "estimators such as cte-input can still rank it)")
    raise InvalidModelError(f"{name}: no grey-box access: {'; '.join(reasons)}; use an input-perturbation "
                            "estimator (--estimator cte-input)")


def check_blackbox_runtime(descr, weight_format: str | None, *, name: str) -> None:
    """Raise a one-line :class:`InvalidModelError` when the weights black-box prediction would use cannot run here.

    ``weight_format`` None means bioimageio.core's priority order: it fails only when every format
    present needs a runtime that is missing (e.g. a Keras-only package without tensorflow).
    """
    present = available_weight_formats(descr)
    candidates = [weight_format] if weight_format else present
    problems = [(f, missing_runtime(f)) for f in candidates if f in present]
    if problems and all(m is not None for _, m in problems):
        formats = ", ".join(f for f, _ in problems)
        raise InvalidModelError(f"{name}: its {formats} weights cannot run here ({problems[0][1]})")


_ADAPTER_FORMATS = {"PytorchModelAdapter": "pytorch_state_dict", "TorchscriptModelAdapter": "torchscript",
                    "ONNXModelAdapter": "onnx", "TensorflowModelAdapter": "tensorflow_saved_model_bundle",
                    "KerasModelAdapter": "keras_hdf5"}

_ASKED = "asked for with --weight-format"
_PRIORITY = "bioimageio.core's priority order among the formats present"


def choose_weights(descr, policy: CodePolicy, *, name: str, greybox: bool,
                   weight_format: str | None = None) -> WeightChoice:
    """The weights one model runs with, and why: the one decision the predictor factory acts on.

    Grey-box: :func:`greybox_weights`. Black-box: the runtime must be installed (:func:`check_blackbox_runtime`)
    and the code allowed (:func:`bioimage_cte.zoo.trust.blackbox_weights`); ``format`` None means bioimageio.core's
    priority order, settled by :func:`blackbox_ran_as` once the pipeline has picked its adapter.

    Raises
    ------
    UntrustedCodeError, InvalidModelError
        As :func:`greybox_weights`, or when no format present can run black-box here.
    """
    if greybox:
        return greybox_weights(descr, policy, name=name, weight_format=weight_format)
    check_blackbox_runtime(descr, weight_format, name=name)
    built, chosen = blackbox_weights(descr, weight_format, policy, name=name)
    packaged = None if weight_format or chosen else _packaged_instead_of_remote(descr)
    if packaged is not None:
        chosen = packaged
        why = (f"its pytorch_state_dict weights are on a server, not in the package; {packaged} is in the package "
               "(no download)")
        return WeightChoice(chosen, "black-box", why, built)  # type: ignore[arg-type]
    if weight_format:
        why = _ASKED
    elif chosen is not None:  # the state dict's architecture may not run: a code-free format instead
        why = f"its pytorch_state_dict architecture may not run without --trust-code; {chosen} needs no package code"
    else:
        why = _PRIORITY
    return WeightChoice(chosen, "black-box", why, built)  # type: ignore[arg-type]


def _packaged_instead_of_remote(descr) -> str | None:
    """A code-free format kept in the package when the state dict (first in bioimageio.core's order) is a URL."""
    state = descr.weights.pytorch_state_dict
    if state is None or not str(state.source).startswith(("http://", "https://")):
        return None
    for fmt in ("torchscript", "onnx"):
        entry = getattr(descr.weights, fmt, None)
        if entry is not None and not str(entry.source).startswith(("http://", "https://")) and \
                missing_runtime(fmt) is None:
            return fmt
    return None


def blackbox_ran_as(choice: WeightChoice, used: str) -> WeightChoice:
    """``choice`` with the format bioimageio.core's adapter runs (a state dict that did not load falls back)."""
    why = choice.reason
    if choice.reason == _PRIORITY and choice.descr.weights.pytorch_state_dict is not None \
            and used != "pytorch_state_dict":
        why = f"its pytorch_state_dict weights did not load; bioimageio.core fell back to {used}"
    return WeightChoice(used, "black-box", why, choice.descr)


def adapter_format(adapter: Any) -> str:
    """The weights format a bioimageio.core model adapter runs (it picks by priority when none was named)."""
    for cls in type(adapter).__mro__:
        if cls.__name__ in _ADAPTER_FORMATS:
            return _ADAPTER_FORMATS[cls.__name__]
    return type(adapter).__name__
