"""Every example a user copies runs as written, on a small copy of the demo zoo (two packages, two short images)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELS = ("nuclei-small-bright", "weak-nuclei-tiny")
CROP = 96

pytestmark = pytest.mark.slow


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """Two demo packages and one target (two 96 x 96 DSB2018 crops) in a scratch folder."""
    import tifffile

    root = tmp_path_factory.mktemp("examples")
    zoo = root / "zoo"
    zoo.mkdir()
    for name in MODELS:
        shutil.copy(ROOT / "resources" / "zoo" / f"{name}.zip", zoo)
    target = root / "dsb2018"
    (target / "images").mkdir(parents=True)
    shutil.copy(ROOT / "resources" / "data" / "dsb2018" / "target.yaml", target)
    for path in sorted((ROOT / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))[:2]:
        tifffile.imwrite(target / "images" / path.name, tifffile.imread(path)[:CROP, :CROP])
    return {"root": root, "zoo": zoo, "target": target, "images": target / "images"}


def test_every_example_has_a_test():
    tested = {"rank_from_python", "annotate_folder", "zoo_on_dask", "deploy_work_pool"}
    builders = {"build_demo_zoo", "build_shape_zoo", "build_recipe_zoo"}  # rebuild resources/ (minutes to hours)
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested | builders


def test_rank_from_python_reads_the_ranking_into_a_table(small, tmp_path, capsys):
    example = _example("rank_from_python")
    table = example.main([str(small["zoo"]), str(small["images"]), "--csv", str(tmp_path / "ranking.csv")])
    printed = capsys.readouterr().out
    assert list(table["model"]) == list(table.sort_values("rank")["model"]) and set(table["model"]) == set(MODELS)
    assert (table["status"] == "ranked").all() and table["score"].is_monotonic_decreasing
    assert table["low"].le(table["score"]).all() and table["score"].le(table["high"]).all()
    assert bool(table["near_top"].iloc[0]) and f"{table['score'].iloc[0]:.6f}"[:5] in printed
    again = example.pd.read_csv(tmp_path / "ranking.csv")
    assert list(again["model"]) == list(table["model"]) and again["score"].tolist() == table["score"].tolist()


def test_annotate_folder_writes_each_score_onto_its_package(small, tmp_path):
    packages = tmp_path / "packages"
    shutil.copytree(small["zoo"], packages)
    example = _example("annotate_folder")
    entries = example.main([str(packages), str(small["images"]), "--target", "my-lab-nuclei"])
    assert sorted(p.name for p in entries) == sorted(f"{m}.zip" for m in MODELS)
    ranking = json.loads((packages / "ranking-my-lab-nuclei.json").read_text())
    for model in ranking["models"]:
        (entry,) = entries[packages / f"{model['name']}.zip"]
        assert (entry["target"], entry["rank"], entry["n_models"]) == ("my-lab-nuclei", model["rank"], 2)
        assert entry["score"] == pytest.approx(model["score"])
    assert len(list((packages / "bioimage-cte-backups").rglob("*.bak"))) == 2  # in place, with backups


def _run(name: str, *args: object, timeout: float = 1200) -> str:
    """``python examples/NAME.py ARGS`` as a user runs it, in its own process (Prefect keeps global state, so an
    example that starts servers must not share the test session's); returns its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TQDM_DISABLE="1", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_zoo_on_an_existing_dask_cluster(small, tmp_path):
    out = _run("zoo_on_dask", small["zoo"], small["target"], "--workers", "2", "--output-dir", tmp_path / "out",
               "--store", tmp_path / "results.sqlite")
    assert re.search(r"Dask scheduler at tcp://127\.0\.0\.1:\d+ with 2 workers", out), out
    assert "all 2 model x target pairs ok; 2 scored, 0 from the store; ranked dsb2018: 2 models" in out
    ranking = json.loads((tmp_path / "out" / "rankings" / "dsb2018.json").read_text())
    assert sorted(m["name"] for m in ranking["models"]) == sorted(MODELS)
    assert (tmp_path / "out" / "leaderboard.html").is_file()


def test_the_work_pool_deployment_is_valid_and_a_worker_runs_it(small, tmp_path):
    example = _example("deploy_work_pool")
    (deployment,) = example.check_deployments()
    assert deployment["work_pool"]["name"] == "local-process"
    broken = tmp_path / "prefect.yaml"
    broken.write_text(example.PREFECT_FILE.read_text().replace("match_task: true", "match_tasks: true"))
    with pytest.raises(ValueError, match="unexpected keyword argument 'match_tasks'"):
        example.check_deployments(broken)
    # deployed to a process work pool of a temporary server, run once by a worker in its own process
    out = _run("deploy_work_pool", "--temporary-server", "--run-now", "--zoo", small["zoo"], "--target",
               small["target"], "--output-dir", tmp_path / "run")
    assert "1 deployment(s) valid: weekly-zoo-ranking" in out
    assert "flow run zoo on dsb2018: Completed (all 2 model x target pairs ok; 2 scored" in out, out
    ranking = json.loads((tmp_path / "run" / "rankings" / "dsb2018.json").read_text())
    assert sorted(m["name"] for m in ranking["models"]) == sorted(MODELS)
