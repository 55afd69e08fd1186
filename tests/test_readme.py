"""Every command block of the README runs as written, against the demo zoo with short images.

Each ```bash block is run by bash, unchanged, in a scratch folder laid out like the repository: ``.venv`` is this
checkout's, ``resources/zoo`` holds three demo packages (two nuclei models, one cell model) and
``resources/data/<target>`` and ``my_images/`` hold 96 x 96 crops of two of the real images, so the whole README
runs in a few minutes. Blocks that cannot run inside a test are listed in SKIPPED with the test that covers them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODELS = ("nuclei-small-bright", "nuclei-dim-blurry", "cells-brightfield")
TARGETS = ("dsb2018", "nuclei-tiny-crowded")
CROP = 96

#: a zoo-rank block of the README -> its flow's final message (bioimage_cte_flows.operations.final_message) on the
#: sandbox: the two nuclei models on both targets; with --match-task the cell model is paired but does not fit
#: the nuclei targets. "{scored}"/"{cached}": how many pairs this block scores and finds in the results store.
ZOO_RANK_MESSAGES = {
    ".venv/bin/bioimage-cte zoo-rank resources/zoo resources/data/dsb2018 resources/data/nuclei-tiny-crowded "
    "--tag nuclei": "all 4 model x target pairs ok; {scored} scored, {cached} from the store; ranked dsb2018: 2 "
                    "models, nuclei-tiny-crowded: 2 models",
    ".venv/bin/bioimage-cte zoo-rank resources/zoo resources/data/*/ --match-task --output-dir zoo-ranking-all":
        "all 4 model x target pairs ok; {scored} scored, {cached} from the store; 2 pairs do not fit; ranked "
        "dsb2018: 2 models, nuclei-tiny-crowded: 2 models",
}

#: first line of a block that is not run here -> why, and what covers it instead
SKIPPED = {
    "bash scripts/demo.sh": "sets up and runs the whole demo and test suite (scripts/test.sh runs the suite itself)",
    ".venv/bin/bioimage-cte rank affable-shark": "downloads from bioimage.io, and tests reach no network; "
                                                 "tests/test_zoo_ids.py ranks models by ID and by DOI from a "
                                                 "loopback zoo, online and then from the cache",
    ".venv/bin/prefect server start": "starts a server and serves forever; tests/test_schedule.py serves the flow "
                                      "on a cron schedule against a real server and sees SCHEDULED runs",
}


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)


def _runnable() -> list[str]:
    return [b for b in _blocks() if not any(b.lstrip().startswith(first) for first in SKIPPED)]


def test_every_readme_block_is_run_or_skipped_with_a_reason():
    blocks = _blocks()
    assert len(blocks) >= 4
    skipped = [b for b in blocks if b not in _runnable()]
    assert len(skipped) == len(SKIPPED), "a SKIPPED entry no longer matches a README block"
    assert all(".venv/bin/bioimage-cte" in b for b in _runnable())  # never a bare command that is not on PATH
    # every zoo-rank block is checked against its final message
    assert sorted(b.strip() for b in _runnable() if "zoo-rank" in b) == sorted(ZOO_RANK_MESSAGES)


#: (index, estimator) of the zoo-rank blocks run so far in this session's sandbox
_ZOO_RANK_RAN: list[tuple[int, str]] = []


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder laid out like the repository, with the demo zoo's packages and short images."""
    import tifffile

    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(ROOT / ".venv")
    shutil.copy(ROOT / "prefect.toml", root)
    zoo = root / "resources" / "zoo"
    zoo.mkdir(parents=True)
    for name in MODELS:
        shutil.copy(ROOT / "resources" / "zoo" / f"{name}.zip", zoo)
    for target in TARGETS:
        source, dest = ROOT / "resources" / "data" / target, root / "resources" / "data" / target
        dest.mkdir(parents=True)
        shutil.copy(source / "target.yaml", dest)
        for sub in ("images", "labels"):
            (dest / sub).mkdir()
            for path in sorted((source / sub).glob("*.tif"))[:2]:
                tifffile.imwrite(dest / sub / path.name, tifffile.imread(path)[..., :CROP, :CROP])
    (root / "my_images").mkdir()
    first = sorted((root / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))[0]
    shutil.copy(first, root / "my_images")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_runnable())))
def test_readme_block_runs_as_written(sandbox, index):
    block = _runnable()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # HOME in the sandbox: the default results store (~/.cache/bioimage-cte) starts empty and the user's is untouched
    env.update(HOME=str(sandbox / "home"), COLUMNS="80", TQDM_DISABLE="1", DO_NOT_TRACK="1",
               PREFECT_HOME=str(sandbox / ".prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="150")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=sandbox, env=env, capture_output=True,
                            text=True, timeout=1500, check=False)
    assert result.returncode == 0, f"{block}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    for line in result.stdout.splitlines():  # tables and messages fit 80 columns, except a path never broken
        paths = [t.strip("(),:") for t in line.split() if "/" in t and (sandbox / t.strip("(),:")).exists()]
        assert len(line) - sum(len(p) for p in paths) <= 80, f"wider than 80 columns: {line!r}"
    # not a terminal (captured, as in `... > log 2>&1`): plain progress lines while the commands run
    if "bioimage-cte rank" in block:
        assert re.search(r"\[0:\d\d:\d\d\] loading model 1/\d+ ", result.stderr), result.stderr[-2000:]
        assert re.search(r"image \d+/\d+, (\d+)/\1 done", result.stderr), result.stderr[-2000:]
    if "zoo-rank" in block:
        # a later block finds the pairs an earlier one scored in the results store: a progress line either way
        assert re.search(r"\[0:\d\d:\d\d\] \d+/\d+ \S+ on \S+: (scored|from the store)", result.stderr), \
            result.stderr[-2000:]
        # the run's final message, exactly: every pair ok, each target ranked with its models
        expected = re.escape(ZOO_RANK_MESSAGES[block.strip()]).replace(r"\{scored\}", r"(\d+)").replace(
            r"\{cached\}", r"(\d+)")
        found = re.search(rf"^\[\d+:\d\d:\d\d\] {expected}$", result.stderr, flags=re.M)
        assert found, f"expected {ZOO_RANK_MESSAGES[block.strip()]!r} in:\n{result.stderr[-3000:]}"
        scored, cached = map(int, found.groups())
        assert scored + cached == 4
        assert f"scored {scored} model x target pairs, {cached} taken from" in result.stdout
        # an earlier zoo-rank block with the same estimator stored these four pairs in the sandbox's results store;
        # the estimator follows --tag (nuclei: tta+consensus+boundary), and another estimator scores them again
        from bioimage_cte.run.options import default_estimator

        tag = re.search(r"--tag (\S+)", block)
        estimator = default_estimator(tag.group(1) if tag else None)
        if _ZOO_RANK_RAN:
            same = estimator in [e for _, e in _ZOO_RANK_RAN]
            assert (scored, cached) == ((0, 4) if same else (4, 0)), (estimator, _ZOO_RANK_RAN, found.group(0))
        _ZOO_RANK_RAN.append((index, estimator))
    if "transfer-matrix" in block:  # written where the command ran, not into the shipped zoo
        assert (sandbox / "transfer_matrix.csv").is_file()
        assert not (sandbox / "resources" / "zoo" / "transfer_matrix.csv").exists()
    if "evaluate" in block:
        assert (sandbox / "evaluation.csv").read_text().startswith("estimator,pearson,spearman")


def _prose() -> str:
    """The README with its line breaks and Markdown code marks taken out, as one line of words."""
    return " ".join(README.read_text().replace("`", "").split())


@pytest.mark.slow
def test_the_counts_the_readme_states_are_what_the_code_finds():
    """The demo zoo's counts in the README, from the packages and targets themselves (no model runs: the plan of a
    zoo run and the fit of every package to the images are read from the rdf.yaml files and the first image)."""
    from collections import Counter

    from bioimage_cte.predict.fit import ImageFit, input_layout
    from bioimage_cte.run.jobs import plan_zoo
    from bioimage_cte.run.options import RankOptions, default_estimator
    from bioimage_cte.zoo.sources import read_rdf, select_models
    from bioimage_cte_flows.operations import final_message

    prose = _prose()
    zoo, data = ROOT / "resources" / "zoo", ROOT / "resources" / "data"
    packages, targets = sorted(zoo.glob("*.zip")), sorted(p for p in data.iterdir() if p.is_dir())
    assert f"({len(packages)} packages x {len(targets)} targets = {len(packages) * len(targets)} pairs" in prose
    # the whole demo zoo on every target, with --match-task: what is scored, what does not fit, and per target
    _, jobs, unfit = plan_zoo(str(zoo), [str(t) for t in targets], RankOptions(), match_task=True)
    per_target = Counter(j.target.name for j in jobs)
    message = final_message(scored=len(jobs), cached=0, failed=0, ranked=dict(sorted(per_target.items())),
                            unfit=len(unfit))
    assert f"with the tensorflow extra installed, {message}" in prose, message
    # the demo ranking (scripts/demo.sh): the nuclei packages, those that fit the 2D DSB2018 images, the 3D ones
    nuclei = select_models([str(zoo)], tag="nuclei")
    fit = ImageFit(sorted((data / "dsb2018" / "images").glob("*.tif"))[0])
    unfit_2d = [s for s in nuclei
                if (layout := input_layout(read_rdf(s))) is not None and fit.reason(layout, model=s.location)]
    assert f"the {len(nuclei)} nuclei packages of the demo zoo" in prose
    assert f"{len(unfit_2d)} of them are 3D models" in prose
    # the demo installs no tensorflow, so its Keras packages fail; the README's headline example is that run
    keras = [s for s in nuclei if "keras_hdf5" in ((read_rdf(s) or {}).get("weights") or {})]
    ranked = len(nuclei) - len(unfit_2d) - len(keras)
    assert (f"{default_estimator('nuclei')} ranking of {ranked} models on 4 images; {len(unfit_2d)} do not fit "
            f"these images, {len(keras)} failed") in prose
    assert f"the {len(keras)} Keras packages fail without the tensorflow extra" in prose
