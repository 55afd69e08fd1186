"""k-shot fine-tuning on real zoo packages at tiny scale: improvement, reproducibility, export, CLI."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bioimage_cte.base.errors import InvalidImageError, InvalidModelError
from bioimage_cte.predict.images import list_images, load_labels, load_target
from bioimage_cte.studies.finetune import (
    FinetuneConfig,
    convergence_step,
    export_finetuned,
    finetune,
    kshot_split,
    load_packaged_network,
    predict_foreground,
    run_finetune_benchmark,
    summarize_runs,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
# An easy target on which nuclei-large-sparse is mediocre zero-shot (Dice ~0.34: it merges the tiny crowded
# nuclei) and nuclei-small-bright is already good: fine-tuning must lift the first a lot within a few steps.
TARGET = ROOT / "resources" / "data" / "nuclei-tiny-crowded"
TINY = FinetuneConfig(steps=8, batch_size=4, patch=64, eval_every=4, seed=0)


@pytest.fixture(scope="module")
def target() -> tuple[list[np.ndarray], list[np.ndarray]]:
    paths = list_images(TARGET / "images")[:4]
    labels = load_labels(paths, TARGET / "labels")
    # 128 x 128 crops keep every forward pass small
    return [load_target(p)[:128, :128] for p in paths], [lab[:128, :128] for lab in labels]


@pytest.fixture(scope="module")
def mediocre(zoo_packages):
    return load_packaged_network(next(p for p in zoo_packages if p.stem == "nuclei-large-sparse"))


def test_kshot_split_is_seeded_nested_and_disjoint_from_test():
    a = kshot_split(8, ks=[1, 5, "all"], n_test=2, seed=3)
    assert a == kshot_split(8, ks=[1, 5, "all"], n_test=2, seed=3)
    assert set(a.train["1"]) <= set(a.train["5"]) <= set(a.train["all"])
    assert not set(a.test) & set(a.train["all"]) and len(a.train["all"]) == 6
    with pytest.raises(InvalidImageError, match="cannot be split"):
        kshot_split(2, ks=[1], n_test=2, seed=0)


def test_convergence_step():
    assert convergence_step([(0, 0.9), (5, 0.95), (10, 0.93)]) == 0
    assert convergence_step([(0, 0.0), (5, 0.5), (10, 1.0)]) == 10


@pytest.mark.slow
def test_preprocessing_and_forward_match_the_bioimageio_pipeline(mediocre, target):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    image = target[0][0]
    with make_predictor(load_model(mediocre.source), name="model", greybox=False,
                        weight_format="pytorch_state_dict") as predictor:
        expected = predictor.predict(image).foreground
    assert np.allclose(predict_foreground(mediocre, image), expected, atol=1e-4)


@pytest.mark.slow
def test_finetuning_improves_dice_on_an_easy_target(mediocre, target):
    images, labels = target
    split = kshot_split(len(images), ks=[1], n_test=2, seed=0)
    run, _ = finetune(mediocre, images, labels, split.train["1"], split.test, config=TINY, k="1")
    assert run.zero_shot_dice < 0.6
    assert run.final_dice > run.zero_shot_dice + 0.2
    assert [s for s, _ in run.curve] == [0, 4, 8]


@pytest.mark.slow
def test_same_seed_reproduces_bit_identically_and_pretrained_network_is_untouched(mediocre, target):
    images, labels = target
    before = {k: v.clone() for k, v in mediocre.net.state_dict().items()}
    runs = [finetune(mediocre, images, labels, [0], [2, 3], config=TINY, k="1") for _ in range(2)]
    (a, net_a), (b, net_b) = runs
    assert a.curve == b.curve
    assert all(torch.equal(net_a.state_dict()[k], net_b.state_dict()[k]) for k in before)
    assert all(torch.equal(mediocre.net.state_dict()[k], v) for k, v in before.items())
    c, _ = finetune(mediocre, images, labels, [0], [2, 3], config=FinetuneConfig(**{**TINY.__dict__, "seed": 1}),
                    k="1")
    assert c.curve != a.curve


@pytest.mark.slow
def test_benchmark_of_two_models_with_scratch_reference_and_cka(zoo_packages, target):
    images, labels = target
    names = ["nuclei-large-sparse", "nuclei-small-bright"]
    sources = [(n, str(next(p for p in zoo_packages if p.stem == n))) for n in names]
    sources.append(("broken", str(ROOT / "no-such-model.zip")))
    bench = run_finetune_benchmark(sources, images, labels, ks=[1], n_test=2, config=TINY, cka_samples=1000)
    assert [r.model for r in bench.runs] == names + ["scratch (features=8, depth=3)"]
    assert "no-such-model.zip" in bench.failures["broken"]
    assert set(bench.layer_cka) == set(names)
    assert all(0 <= v <= 1 + 1e-9 for v in bench.layer_cka[names[0]]["1"].values())
    assert np.allclose(np.diag(bench.zoo_cka["cka"]), 1.0)
    k0, k1 = bench.summary
    assert (k0.k, k1.k) == ("0", "1") and k1.spread < k0.spread  # fine-tuning closes the gap between the two
    three = summarize_runs(bench.runs + bench.runs[:1], zero_shot={names[0]: 0.1, names[1]: 0.9})
    assert three[0].spearman is None  # fewer than 3 models: no rank correlation
    json.dumps(bench.to_json_dict(), allow_nan=False)


@pytest.mark.slow
def test_export_writes_a_package_that_bioimageio_loads_and_predicts(mediocre, target, tmp_path):
    from bioimageio.core import test_model

    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    images, labels = target
    run, net = finetune(mediocre, images, labels, [0], [2, 3], config=TINY, k="1")
    path = export_finetuned(mediocre, net, images[2], tmp_path / "ft.zip", run=run)
    assert test_model(str(path)).status == "passed"
    descr = load_model(str(path))
    assert "finetuned" in descr.tags and descr.config.model_dump()["bioimage_cte"]["finetune"]["k"] == "1"
    with make_predictor(descr, name="model", greybox=False, weight_format="pytorch_state_dict") as predictor:
        assert np.allclose(predictor.predict(images[3]).foreground,
                           predict_foreground(mediocre, images[3], net=net), atol=1e-4)


def test_load_names_the_package_on_error(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("rdf.yaml", "type: model\n")
    with pytest.raises(InvalidModelError, match="bad.zip"):
        load_packaged_network(bad)


@pytest.mark.slow
def test_cli_finetune_benchmark_end_to_end(zoo_packages, tmp_path):
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("nuclei-large-sparse", "nuclei-small-bright", "weak-nuclei-undertrained"):
        (zoo / f"{name}.zip").write_bytes(next(p for p in zoo_packages if p.stem == name).read_bytes())
    out, report = tmp_path / "ft.json", tmp_path / "ft.html"
    result = CliRunner().invoke(app, [
        "finetune-benchmark", str(zoo), "--images", str(TARGET / "images" / "nuclei-tiny-crowded_0[0-2].tif"),
        "--labels", str(TARGET / "labels"), "--k", "1", "--steps", "2", "--eval-every", "1", "--patch", "64",
        "--no-scratch", "--output", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert len(payload["runs"]) == 3 and set(payload["zero_shot"]) == {p.stem for p in zoo.iterdir()}
    assert payload["summary"][1]["spearman"] is not None
    page = report.read_text()
    assert "Zoo similarity" in page and "http" not in page.split("<body>")[1]
    bad = CliRunner().invoke(app, ["finetune-benchmark", str(zoo), "--images", str(TARGET / "images"),
                                   "--labels", str(TARGET / "labels"), "--k", "two"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_finetuning_runs_package_code_only_when_trusted(corpus):
    from bioimage_cte.base.errors import UntrustedCodeError
    from bioimage_cte.studies.finetune import load_packaged_network
    from bioimage_cte.zoo.trust import CodePolicy

    package = corpus.package("custom-code-arch")
    with pytest.raises(UntrustedCodeError, match="custom-code-arch.zip.*--trust-code"):
        load_packaged_network(package)
    assert not corpus.marker.exists(), "fine-tuning ran the package's architecture file without --trust-code"
    try:
        model = load_packaged_network(package, code_policy=CodePolicy(trust_code=True))
        # the network's class comes from the package's own file (imported once per process: an earlier test may
        # already have run it, so the marker alone cannot tell)
        assert not type(model.net).__module__.startswith("bioimage_cte"), type(model.net).__module__
        assert sum(p.numel() for p in model.net.parameters()) > 0
    finally:
        corpus.marker.unlink(missing_ok=True)


@pytest.mark.slow
def test_cli_finetune_lifts_a_mediocre_model_writes_a_valid_package_and_keeps_the_old_one(zoo_packages, tmp_path):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app

    package = next(p for p in zoo_packages if p.stem == "nuclei-large-sparse")
    out = tmp_path / "finetuned.zip"
    out.write_bytes(b"the user's earlier file")
    args = ["finetune", str(package), "--images", str(TARGET / "images" / "nuclei-tiny-crowded_0[0-3].tif"),
            "--labels", str(TARGET / "labels"), "--steps", "40", "--patch", "64", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    before, after = (float(v) for v in re.search(r"Dice ([\d.]+) -> ([\d.]+)", result.output).groups())
    assert after > before + 0.2  # it merges the tiny crowded nuclei zero-shot (Dice ~0.34)
    assert (tmp_path / "finetuned.zip.bak").read_bytes() == b"the user's earlier file"
    descr = load_description(out, perform_io_checks=True)
    assert isinstance(descr, ModelDescr) and "finetuned" in descr.tags
    folder = CliRunner().invoke(app, [*args[:-1], str(tmp_path)])  # a folder is never replaced
    assert folder.exit_code == 1 and "is a folder" in folder.output and tmp_path.is_dir()


@pytest.mark.slow
def test_cli_finetune_refuses_a_model_it_cannot_repackage_before_training(tmp_path):
    import zipfile

    from corpus import _rewrite
    from typer.testing import CliRunner

    from bioimage_cte.cli.commands import app

    # the lab's own architecture file under another class name: loadable with --trust-code, not re-packageable
    source = ROOT / "resources" / "zoo" / "nuclei-dense-textured-own-arch.zip"
    code = zipfile.ZipFile(source).read("unet.py").replace(b"class UNet2d", b"class LabNet")

    def rename(rdf: dict) -> None:
        rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] = "LabNet"

    package = _rewrite(source, tmp_path / "lab-net.zip", rdf=rename, files={"unet.py": code})
    out = tmp_path / "finetuned.zip"
    # patches larger than the images would stop the training at its first line: the export check must come first
    result = CliRunner().invoke(app, ["finetune", str(package), "--images", str(TARGET / "images"), "--labels",
                                      str(TARGET / "labels"), "--patch", "512", "--trust-code", "-o", str(out)])
    assert result.exit_code == 1 and "LabNet cannot be exported" in result.output and not out.exists()
