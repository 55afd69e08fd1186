"""The bad-input corpus (tests/corpus.py) through the CLI and the library, and which package code may run.

Every bad package must be reported on one line naming the package and the reason, without
stopping the run: the good models are still ranked. Package code runs only where allowed.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml
from corpus import MODELS, NOT_FITTING, RANKED_WITHOUT_ITS_CODE, SKIPPED_BY_GREYBOX, _rewrite
from typer.testing import CliRunner

from bioimage_cte.base.errors import InvalidModelError, UntrustedCodeError
from bioimage_cte.cli.commands import app
from bioimage_cte.zoo.trust import CodePolicy

pytestmark = pytest.mark.slow  # the corpus is built from real torch networks and every test loads packages

runner = CliRunner()


def _invoke(*args: str):
    # written for the grey-box path (skipped architectures, trust): rank with cte-dropout unless a test names another
    extra = ["--estimator", "cte-dropout"] if args[:1] == ("rank",) and "--estimator" not in args else []
    return runner.invoke(app, [str(a) for a in args] + extra)


def _lines(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("failed ", "skipped ")) and f" {name} (" in line
            or line.startswith(f"does not fit {name}:")]


@pytest.fixture(scope="module")
def cli_ranking(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranking") / "ranking.json"
    result = _invoke("rank", corpus.zoo, "--images", corpus.good_images, "--output", out)
    return result, json.loads(out.read_text()) if out.exists() else None


def test_good_models_are_ranked_despite_every_bad_one(cli_ranking):
    result, payload = cli_ranking
    assert result.exit_code == 0, result.output
    # the headline counts the ranked, the models these images do not fit, those skipped and those that failed apart
    stages = [f["stage"] for f in payload["failures"]]
    failed = len(stages) - stages.count("unfit") - stages.count("skipped")
    assert (f"ranking of 3 models on 2 images; {stages.count('unfit')} do not fit these images, "
            f"{stages.count('skipped')} skipped (package code not allowed), {failed} failed"
            ) in " ".join(result.output.split())
    assert sorted(m["name"] for m in payload["models"]) == sorted(["good-file-arch", "good-library-arch",
                                                                   RANKED_WITHOUT_ITS_CODE])
    (ranked,) = [m for m in payload["models"] if m["name"] == RANKED_WITHOUT_ITS_CODE]
    assert (ranked["weights"]["format"], ranked["weights"]["access"]) == ("torchscript", "grey-box")
    assert all(m["score"] is not None and m["n_valid"] == 2 for m in payload["models"])
    assert sorted(f["name"] for f in payload["failures"]) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_model_is_one_line_naming_the_package_and_the_reason(cli_ranking, corpus, name):
    result, payload = cli_ranking
    (failure,) = [f for f in payload["failures"] if f["name"] == name]
    reason = failure["reason"]
    assert "\n" not in reason and str(corpus.package(name)) in reason
    assert MODELS[name][1] in reason
    # untrusted package code: skipped; images the model cannot see: unfit; weights the grey-box estimator refuses:
    # estimator; anything else: predict
    skipped, unfit = name in SKIPPED_BY_GREYBOX, name in NOT_FITTING
    expected = "skipped" if skipped else "unfit" if unfit else "estimator" if name == "pickle-weights" else "predict"
    assert failure["stage"] == expected
    (line,) = _lines(result.output, name)
    assert MODELS[name][1] in line
    assert line.startswith("skipped" if skipped else "does not fit" if unfit else "failed")


def test_no_package_code_and_no_pickle_ran(cli_ranking, corpus):
    assert cli_ranking[0].exit_code == 0
    assert not corpus.marker.exists(), "the package's architecture file ran without --trust-code"
    assert not corpus.pickle_marker.exists(), "a pickled weights file ran code"
    assert not (corpus.zoo.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_black_box_falls_back_to_torchscript_and_skips_code_only_models(corpus):
    from bioimage_cte.cte.outcomes import Stage
    from bioimage_cte.cte.registry import make_estimator
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.scoring import rank_models
    from bioimage_cte.zoo.sources import find_models

    names = ("good-file-arch", "custom-code-arch", "custom-code-only", "pickle-weights")
    sources = find_models([corpus.package(n) for n in names])
    results, failures = rank_models(sources, sorted(corpus.good_images.iterdir()), [make_estimator("cte-input")],
                                    RankOptions(estimator="cte-input"))
    # the untrusted architecture is replaced by its torchscript weights; bioimageio.core falls back to them too
    # when the state dict is refused
    assert sorted(r.source.name for r in results) == ["custom-code-arch", "good-file-arch", "pickle-weights"]
    assert all(len(r.per_image["cte-input"]) == 2 for r in results)
    (failure,) = failures
    assert (failure.name, failure.stage) == ("custom-code-only", Stage.SKIPPED)
    assert "no torchscript or onnx weights to use instead; pass --trust-code" in failure.reason
    assert not corpus.marker.exists() and not corpus.pickle_marker.exists()


def test_weights_load_with_weights_only_even_when_code_is_trusted(corpus):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    descr = load_model(str(corpus.package("pickle-weights")))
    with pytest.raises(InvalidModelError, match="weights_only=True refused it"):
        make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name="pickle-weights",
                       code_policy=CodePolicy(trust_code=True))
    assert not corpus.pickle_marker.exists()


def test_trust_code_runs_the_package_architecture_only_when_asked(corpus):
    package = corpus.package("custom-code-arch")
    image = sorted(corpus.good_images.iterdir())[0]
    result = _invoke("rank", package, "--images", image)
    assert result.exit_code == 0, result.output
    # ranked through its torchscript weights; the JSON says why they were used
    assert "custom-code-arch" in result.output and "skipped" not in result.output
    assert not corpus.marker.exists()
    result = _invoke("rank", package, "--images", image, "--weight-format", "pytorch_state_dict")
    assert result.exit_code == 3, result.output  # its only model skipped: nothing ranked
    assert "skipped custom-code-arch (skipped)" in result.output and "--trust-code" in result.output
    assert not corpus.marker.exists()
    try:
        result = _invoke("rank", package, "--images", image, "--trust-code")
        assert result.exit_code == 0, result.output
        assert corpus.marker.read_text() == "ran"
        assert "custom-code-arch" in result.output and "skipped" not in result.output
    finally:
        corpus.marker.unlink(missing_ok=True)


def _with_library(src: Path, dst: Path, module: str) -> Path:
    def edit(rdf: dict) -> None:
        rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] = module

    return _rewrite(src, dst, rdf=edit)


def test_library_architecture_needs_a_trusted_installed_library(corpus, tmp_path):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    descr = load_model(str(_with_library(corpus.package("good-library-arch"), tmp_path / "m.zip", "mylab.nets")))
    with pytest.raises(UntrustedCodeError, match="'mylab.nets', which is not a trusted library.*--trust-library mylab"):
        make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name="m")
    with pytest.raises(InvalidModelError, match="'mylab' is not installed"):
        make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name="m",
                       code_policy=CodePolicy.with_libraries(["mylab"]))
    assert CodePolicy().allows_module("bioimage_cte.demozoo.archs.unet")
    assert not CodePolicy().allows_module("bioimage_cte")


def test_custom_processing_code_does_not_run_by_default(corpus, tmp_path):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    marker = tmp_path / "processing-ran.txt"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\n\n"
            "def post():\n    return lambda x: x\n").encode()

    def edit(rdf: dict) -> None:
        rdf["outputs"][0]["postprocessing"].append({"id": "custom", "callable": "post", "source": "post.py",
                                                    "sha256": "0" * 64})

    package = _rewrite(corpus.package("good-library-arch"), tmp_path / "custom.zip", rdf=edit,
                       files={"post.py": code})
    descr = load_model(str(package))
    with pytest.raises(UntrustedCodeError, match=r"custom processing is Python code shipped in the package \(post.py"):
        make_predictor(descr, greybox=False, name=str(package))
    assert not marker.exists()


def test_demo_zoo_architecture_file_runs_as_the_installed_module(package):
    """The demo packages ship a copy of bioimage_cte/demozoo/archs/unet.py: the installed module is imported."""
    from bioimage_cte.demozoo.archs.unet import UNet2d
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    descr = load_model(str(package))
    with zipfile.ZipFile(package) as zf:
        arch = yaml.safe_load(zf.read("rdf.yaml"))["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["source"] == "unet.py"  # a file in the package, not an import
    with make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name="demo") as predictor:
        (net,) = [model for _, model in predictor.adapter._model_queue.queue]
        assert isinstance(net, UNet2d)


# --- images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "expected"), [
    ("unreadable", "cannot read image {folder}/noise.tif (TiffFileError"),
    ("zero-bytes", "image {folder}/empty.tif is an empty file (0 bytes); remove it or export it again"),
    ("empty-folder", "no images found in {folder}: expected .tif, .tiff, .png or .npy files"),
])
def test_bad_images_stop_before_any_model_with_one_line(corpus, case, expected):
    folder = corpus.images / case
    result = _invoke("rank", corpus.package("good-library-arch"), "--images", folder)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert expected.format(folder=folder) in result.output


def test_constant_image_is_scored_with_a_warning(corpus, tmp_path):
    out = tmp_path / "r.json"
    result = _invoke("rank", corpus.package("good-library-arch"), "--images", corpus.images / "constant",
                     "--output", out)
    assert result.exit_code == 0, result.output
    flat = corpus.images / "constant" / "b-flat.tif"
    assert f"warning: image {flat} is constant: every pixel is 7.0; it is scored" in result.output
    assert json.loads(out.read_text())["models"][0]["n_images"] == 2


def test_mixed_shapes_and_stacks_are_padded_per_image(corpus, tmp_path):
    out = tmp_path / "r.json"
    result = _invoke("rank", corpus.package("good-library-arch"), "--images", corpus.images / "mixed-shapes",
                     "--output", out)
    assert result.exit_code == 0, result.output
    (model,) = json.loads(out.read_text())["models"]
    assert model["n_images"] == 3 and len(model["per_image"]) == 3


def test_trust_settings_reach_the_store_key_only_when_set(corpus):
    from bioimage_cte.run.jobs import _settings, read_target
    from bioimage_cte.run.options import RankOptions

    target = read_target(corpus.good_images)
    default = _settings(RankOptions(estimator="cte-dropout"), target)
    trusted = _settings(RankOptions(estimator="cte-dropout", trust_code=True, trusted_libraries=("mylab",)), target)
    assert "trust_code" not in default  # keys of earlier runs stay valid
    assert trusted == {**default, "trust_code": True, "trusted_libraries": ["mylab"]}
    policy = RankOptions(trust_code=True, trusted_libraries=("mylab",)).code_policy()
    assert policy.trust_code and policy.allows_module("mylab.nets") and policy.allows_module("monai")
