"""Which package code may run (bioimage_cte.zoo.trust), on hand-built descriptions: no model is loaded and no torch is
imported (bioimageio.spec's description classes only). Loading real packages under the policy is in
test_corpus.py (slow)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bioimage_cte.base.errors import InvalidModelError, UntrustedCodeError
from bioimage_cte.zoo.trust import (
    CODE_FREE_WEIGHT_FORMATS,
    DEFAULT_TRUSTED_LIBRARIES,
    CodePolicy,
    blackbox_weights,
    check_processing_code,
    greybox_descr,
)

UNET = Path(__file__).resolve().parents[1] / "bioimage_cte" / "demozoo" / "archs" / "unet.py"


# --- the policy --------------------------------------------------------------------------------------------------


def test_default_policy_trusts_installed_libraries_by_import_prefix():
    policy = CodePolicy()
    assert not policy.trust_code and policy.trusted_libraries == DEFAULT_TRUSTED_LIBRARIES
    for module in ("bioimage_cte.demozoo.archs.unet", "bioimage_cte.demozoo.archs", "monai", "monai.networks.nets",
                   "torch.nn", "torchvision.models", "stardist.models"):
        assert policy.allows_module(module), module
    for module in ("bioimage_cte", "bioimage_cte.demozoo", "bioimage_cte.cli", "monaix.nets", "torchx", "mylab",
                   "mylab.nets", ""):
        assert not policy.allows_module(module), module


def test_with_libraries_extends_the_default_list():
    policy = CodePolicy.with_libraries(["mylab"])
    assert policy.allows_module("mylab") and policy.allows_module("mylab.nets.unet")
    assert not policy.allows_module("mylabs.nets")
    assert policy.allows_module("monai.networks") and not policy.trust_code
    assert CodePolicy.with_libraries().trusted_libraries == DEFAULT_TRUSTED_LIBRARIES
    assert CodePolicy.with_libraries(["a"], trust_code=True).trust_code
    assert CodePolicy(trusted_libraries=("mylab",)).allows_module("mylab.x")
    assert not CodePolicy(trusted_libraries=("mylab",)).allows_module("monai")  # replaced, not extended


def test_code_free_weights_are_graphs():
    assert CODE_FREE_WEIGHT_FORMATS == ("torchscript", "onnx")


# --- hand-built descriptions -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Node:
    """Stands for a pydantic description node: model_copy(update=...) as bioimageio.spec's nodes have it."""

    def model_copy(self, *, update: dict):
        return dataclasses.replace(self, **update)


@dataclasses.dataclass(frozen=True)
class _StateDict(_Node):
    architecture: object


@dataclasses.dataclass(frozen=True)
class _Weights(_Node):
    pytorch_state_dict: _StateDict | None
    torchscript: object = None
    onnx: object = None


@dataclasses.dataclass(frozen=True)
class _Tensor(_Node):
    preprocessing: tuple = ()
    postprocessing: tuple = ()


@dataclasses.dataclass(frozen=True)
class _Descr(_Node):
    weights: _Weights
    inputs: tuple = (_Tensor(),)
    outputs: tuple = (_Tensor(),)


def _spec():
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    return ValidationContext(perform_io_checks=False), v0_5


def _library(module: str, callable_: str = "UNet"):
    context, v0_5 = _spec()
    with context:
        return v0_5.ArchitectureFromLibraryDescr(import_from=module, callable=callable_, kwargs={"features": 4})


def _file(path: Path, callable_: str = "UNet2d"):
    context, v0_5 = _spec()
    with context:
        return v0_5.ArchitectureFromFileDescr(source=path, callable=callable_, kwargs={"features": 4})


def _descr(arch, *, torchscript: bool = False, onnx: bool = False, processing: tuple = ()) -> _Descr:
    weights = _Weights(_StateDict(arch), torchscript=object() if torchscript else None,
                       onnx=object() if onnx else None)
    return _Descr(weights, outputs=(_Tensor(postprocessing=processing),))


def _custom_processing(path: Path):
    context, v0_5 = _spec()
    with context:
        return v0_5.CustomProcessingDescr(id="custom", callable="post", source=path, sha256="0" * 64)


def test_trusted_installed_library_architecture_is_used_as_is():
    descr = _descr(_library("bioimage_cte.demozoo.archs.unet", "UNet2d"))
    assert greybox_descr(descr, CodePolicy(), name="m.zip") is descr
    assert blackbox_weights(descr, None, CodePolicy(), name="m.zip") == (descr, None)


def test_untrusted_library_architecture_is_skipped_with_the_fix():
    descr = _descr(_library("mylab.nets"))
    with pytest.raises(UntrustedCodeError, match=r"m.zip: skipped by grey-box estimators: .*'mylab.nets', which is "
                                                 r"not a trusted library.*--trust-library mylab"):
        greybox_descr(descr, CodePolicy(), name="m.zip")
    # trusted but not installed: a broken model, not a policy question
    with pytest.raises(InvalidModelError, match="'mylab' is not installed"):
        greybox_descr(descr, CodePolicy.with_libraries(["mylab"]), name="m.zip")
    with pytest.raises(InvalidModelError, match="'mylab' is not installed"):
        greybox_descr(descr, CodePolicy(trust_code=True), name="m.zip")


def test_a_copy_of_the_demo_unet_runs_as_the_installed_module(tmp_path):
    copy = tmp_path / "unet.py"
    copy.write_bytes(UNET.read_bytes())
    descr = _descr(_file(copy))
    replaced = greybox_descr(descr, CodePolicy(), name="demo.zip")
    arch = replaced.weights.pytorch_state_dict.architecture
    assert str(arch.import_from) == "bioimage_cte.demozoo.archs.unet" and arch.callable == "UNet2d"
    assert arch.kwargs == {"features": 4}
    assert descr.weights.pytorch_state_dict.architecture.source == copy  # the description itself is unchanged


def test_an_unknown_architecture_file_runs_only_when_trusted(tmp_path):
    marker = tmp_path / "ran.txt"
    code = tmp_path / "unet.py"
    code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    descr = _descr(_file(code))
    with pytest.raises(UntrustedCodeError, match=r"architecture is Python code shipped in the package \(.*unet.py:"
                                                 r"UNet2d\), which does not run by default; pass --trust-code"):
        greybox_descr(descr, CodePolicy(), name="m.zip")
    assert greybox_descr(descr, CodePolicy(trust_code=True), name="m.zip") is descr
    assert not marker.exists()  # the policy reads the file, it never runs it


def test_a_missing_architecture_file_is_a_broken_package(tmp_path):
    gone = tmp_path / "gone.py"
    gone.write_text("x = 1\n")
    descr = _descr(_file(gone))
    gone.unlink()  # listed in the description, missing from the package
    with pytest.raises(InvalidModelError, match="m.zip: cannot read its architecture file"):
        greybox_descr(descr, CodePolicy(), name="m.zip")


def test_black_box_falls_back_to_code_free_weights(tmp_path):
    code = tmp_path / "unet.py"
    code.write_text("x = 1\n")
    with_graph = _descr(_file(code), torchscript=True, onnx=True)
    assert blackbox_weights(with_graph, None, CodePolicy(), name="m.zip") == (with_graph, "torchscript")
    onnx_only = _descr(_file(code), onnx=True)
    assert blackbox_weights(onnx_only, None, CodePolicy(), name="m.zip") == (onnx_only, "onnx")
    assert blackbox_weights(with_graph, "onnx", CodePolicy(), name="m.zip") == (with_graph, "onnx")
    assert blackbox_weights(with_graph, None, CodePolicy(trust_code=True), name="m.zip") == (with_graph, None)
    with pytest.raises(UntrustedCodeError, match="--weight-format pytorch_state_dict was asked for"):
        blackbox_weights(with_graph, "pytorch_state_dict", CodePolicy(), name="m.zip")
    with pytest.raises(UntrustedCodeError, match="m.zip: skipped: .*it has no torchscript or onnx weights to use "
                                                 "instead; pass --trust-code"):
        blackbox_weights(_descr(_file(code)), None, CodePolicy(), name="m.zip")
    no_state_dict = _Descr(_Weights(None, torchscript=object()))
    assert blackbox_weights(no_state_dict, None, CodePolicy(), name="m.zip") == (no_state_dict, None)


def test_custom_processing_code_runs_only_when_trusted(tmp_path):
    post = tmp_path / "post.py"
    post.write_text("def post():\n    return None\n")
    descr = _descr(_library("torch.nn"), torchscript=True, processing=(_custom_processing(post),))
    for check in (lambda p: check_processing_code(descr, p, name="m.zip"),
                  lambda p: greybox_descr(descr, p, name="m.zip"),
                  lambda p: blackbox_weights(descr, None, p, name="m.zip")):
        with pytest.raises(UntrustedCodeError, match=r"m.zip: skipped: its custom processing is Python code shipped "
                                                     r"in the package \(.*post.py:post\)"):
            check(CodePolicy())
        check(CodePolicy(trust_code=True))
    # trusting a library is not trusting the package's processing code
    with pytest.raises(UntrustedCodeError):
        check_processing_code(descr, CodePolicy.with_libraries(["post"]), name="m.zip")
