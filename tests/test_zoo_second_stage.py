"""A zoo run ranks each target as ``rank`` does: the cross-model half of the default and the predicted Dice come
from the clean masks the store keeps, once every model ran on the target."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bioimage_cte.run.jobs import group_jobs, plan_zoo, rank_target, score_jobs
from bioimage_cte.run.options import RankOptions
from bioimage_cte.run.pipeline import rank
from bioimage_cte.run.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("nuclei-versatile", "nuclei-small-bright", "weak-nuclei-large-only")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo_and_target(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("second-stage")
    zoo = root / "zoo"
    zoo.mkdir()
    for name in MODELS:
        shutil.copy(ROOT / "resources" / "zoo" / f"{name}.zip", zoo)
    source = ROOT / "resources" / "data" / "dsb2018"
    target = root / "dsb2018"
    (target / "images").mkdir(parents=True)
    shutil.copy(source / "target.yaml", target)
    for path in sorted((source / "images").glob("*.tif"))[:3]:
        shutil.copy(path, target / "images")
    return zoo, target


def _by_name(payload: dict) -> dict[str, tuple]:
    return {m["name"]: (m["rank"], round(m["score"], 12), m.get("predicted_dice"), m.get("predicted_dice_interval"))
            for m in payload["models"]}


@pytest.mark.parametrize("estimator", ["tta+consensus", "tta+consensus+boundary"])
def test_a_zoo_ranking_equals_rank_with_consensus_and_predicted_dice(zoo_and_target, tmp_path, estimator):
    zoo, target = zoo_and_target
    options = RankOptions(time_limit=0, estimator=estimator)  # in this process: the same numbers, quicker
    specs, jobs, unfit = plan_zoo(str(zoo), [str(target)], options)
    assert not unfit and len(jobs) == 3
    store = ResultStore(tmp_path / "results.sqlite")
    for group in group_jobs(jobs):
        assert [o.status for o in score_jobs(group, store)] == ["ok"]
    zoo_payload = rank_target(specs[0], jobs, store, options)
    # the direct run names its tag: nuclei models, whose default is tta+consensus+boundary
    chosen = {} if "boundary" in estimator else {"estimator": estimator}
    direct = rank(sorted(zoo.glob("*.zip")), target / "images", RankOptions(time_limit=0, tag="nuclei", **chosen))
    direct_payload = direct.to_json_dict(images=str(target / "images"))
    assert zoo_payload["settings"]["estimator"] == direct_payload["settings"]["estimator"] == estimator
    assert _by_name(zoo_payload) == _by_name(direct_payload)
    by_name = _by_name(zoo_payload)
    assert all(0 < v[2] <= 1 and v[3][0] <= v[2] <= v[3][1] for v in by_name.values())
    # the consensus half counts: the combined score is not tta's own consistency, which one stage alone gives
    tta_alone = {s.name: s.score for s in rank(sorted(zoo.glob("*.zip")), target / "images",
                                                RankOptions(time_limit=0, estimator="tta")).ranking.scores}
    assert any(abs(v[1] - tta_alone[n]) > 1e-6 for n, v in by_name.items())


def test_a_stored_result_without_masks_is_scored_again_not_ranked_on_tta_alone(zoo_and_target, tmp_path):
    import dataclasses

    zoo, target = zoo_and_target
    options = RankOptions(time_limit=0)
    _, jobs, _ = plan_zoo(str(zoo), [str(target)], options)
    store = ResultStore(tmp_path / "results.sqlite")
    for group in group_jobs(jobs):
        score_jobs(group, store)
    old = store.get(jobs[0].key)
    assert old is not None and old.masks
    store.put(jobs[0].key, dataclasses.replace(old, masks=None))  # as an earlier version stored it
    again = [o for group in group_jobs(jobs) for o in score_jobs(group, store)]
    assert [o.scored for o in again] == [True, False, False]
    assert store.get(jobs[0].key).masks == old.masks
