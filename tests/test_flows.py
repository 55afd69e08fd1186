"""The zoo-ranking Prefect flow end to end on a small copy of the demo zoo (3 models, 2 images).

One session-scoped Prefect test server (15-25 s to start) serves every flow run here; each run
costs about a second on top of its scoring, so the runs are few and share one results store
where they can.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

# Offline and quiet before prefect is imported (prefect.toml in the repo root says the same).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

ROOT = Path(__file__).resolve().parents[1]

ZOO = ROOT / "resources" / "zoo"
MODELS = ("nuclei-small-bright", "nuclei-large-sparse", "nuclei-dim-blurry")
OTHER_MODEL = "nuclei-dense-textured"  # copied over one of MODELS to play a changed package
TARGET = "dsb-two"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    import fastapi
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # prefect 3.8.8's server breaks on newer fastapi: Body(min_items=) is gone in 0.155, and from 0.151 an explicit
    # null body field is rejected (422 on reading artifacts)
    if tuple(int(x) for x in fastapi.__version__.split(".")[:2]) >= (0, 151):
        pytest.fail(f"fastapi {fastapi.__version__} breaks prefect 3.8.8's server; pin 'fastapi>=0.139,<0.151' in "
                    "pyproject.toml and reinstall (pip install -e .)")
    home = tmp_path_factory.mktemp("prefect-home")
    # a temporary PREFECT_HOME: tests never touch ~/.prefect, and no result can leak between sessions
    with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "results"),
                                     PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=90):
            # a sync flow joins its heartbeat thread at the end: about 1 s per run for nothing in tests
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield


def _zoo(folder: Path, models=MODELS) -> Path:
    folder.mkdir(parents=True)
    for name in models:
        shutil.copy(ZOO / f"{name}.zip", folder)
    return folder


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    src = ROOT / "resources" / "data" / "dsb2018"
    folder = tmp_path_factory.mktemp("data") / TARGET
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
        for path in sorted((src / sub).glob("*.tif"))[:2]:
            shutil.copy(path, folder / sub)
    shutil.copy(src / "target.yaml", folder)
    return folder


def _run(zoo: Path, target: Path, store: Path, out: Path, **run_options):
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    # written for the grey-box path (the default estimator was cte-dropout when these tests were written)
    summary = run_zoo_ranking(zoo, [target], RankOptions(estimator="cte-dropout"),
                              run=ZooRunOptions(store_path=str(store), output_dir=str(out), **run_options))
    return summary, json.loads(Path(summary.rankings[TARGET]).read_text())


def _order(ranking: dict) -> list[tuple[str, float]]:
    return [(m["name"], m["score"]) for m in ranking["models"]]


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory, target):
    tmp = tmp_path_factory.mktemp("first")
    zoo, store = _zoo(tmp / "zoo"), tmp / "results.sqlite"
    summary, ranking = _run(zoo, target, store, tmp / "out", reports=True)
    return {"zoo": zoo, "store": store, "summary": summary, "ranking": ranking, "out": tmp / "out"}


def test_first_run_scores_everything_and_publishes(first_run):
    from prefect.artifacts import Artifact

    summary, ranking = first_run["summary"], first_run["ranking"]
    assert (summary.scored, summary.cached, summary.failed) == (3, 0, ())
    assert sorted(m["name"] for m in ranking["models"]) == sorted(MODELS)
    assert [m["rank"] for m in ranking["models"]] == [1, 2, 3]
    assert ranking["settings"]["estimator"] == "cte-dropout" and ranking["settings"]["n_images"] == 2
    assert all(len(m["per_image"]) == 2 and m["sha256"] for m in ranking["models"])
    assert list((first_run["out"] / "reports").rglob("bioimage-cte_*.json")), "zoo reports not written"
    table = json.loads(Artifact.get(f"zoo-ranking-{TARGET}").data)
    assert [row["model"] for row in table] == [m["name"] for m in ranking["models"]]
    assert float(Artifact.get("zoo-ranking-progress").data) == 100.0


def test_pairs_that_do_not_fit_are_listed_with_reasons_not_failed(prefect_harness, target, tmp_path):
    zoo = _zoo(tmp_path / "zoo", models=("nuclei-small-bright", "nuclei3d-small", "em-organelles"))
    summary, ranking = _run(zoo, target, tmp_path / "results.sqlite", tmp_path / "out", match_task=True)
    assert [m["name"] for m in ranking["models"]] == ["nuclei-small-bright"] and summary.failed == ()
    reasons = {u["model"]: u["reason"] for u in ranking["not_fitting"]}
    assert "nuclei3d-small.zip: 3D model (input axes zyx) but the image is 2D (" in reasons["nuclei3d-small"]
    assert reasons["em-organelles"] == "tagged for mitochondria, not for the target task nuclei"
    assert {(u.model, u.target) for u in summary.unfit} == {("nuclei3d-small", TARGET), ("em-organelles", TARGET)}
    assert "2 pairs do not fit" in summary.message


def test_second_run_scores_nothing_and_write_back_keeps_the_cache(first_run, target, tmp_path):
    from bioimage_cte.outputs.annotate import read_transferability

    summary, ranking = _run(first_run["zoo"], target, first_run["store"], tmp_path / "out", annotate=True,
                            reports=False)
    assert (summary.scored, summary.cached, summary.failed) == (0, 3, ())
    assert _order(ranking) == _order(first_run["ranking"])
    assert summary.problems == {}
    for name in MODELS:
        assert [e["target"] for e in read_transferability(first_run["zoo"] / f"{name}.zip")] == [TARGET]
    # the annotated packages are the same models: a third run still scores nothing
    summary, _ = _run(first_run["zoo"], target, first_run["store"], tmp_path / "out", reports=False)
    assert (summary.scored, summary.cached) == (0, 3)


def test_changed_package_is_the_only_one_scored_again(first_run, target, tmp_path):
    zoo = _zoo(tmp_path / "zoo")
    shutil.copy(ZOO / f"{OTHER_MODEL}.zip", zoo / f"{MODELS[2]}.zip")  # same name, other weights
    summary, ranking = _run(zoo, target, first_run["store"], tmp_path / "out", reports=False)
    assert (summary.scored, summary.cached, summary.failed) == (1, 2, ())
    before = dict(_order(first_run["ranking"]))
    after = dict(_order(ranking))
    assert after[MODELS[0]] == before[MODELS[0]] and after[MODELS[1]] == before[MODELS[1]]


def test_broken_package_fails_alone(first_run, target, tmp_path):
    zoo = _zoo(tmp_path / "zoo")
    (zoo / "broken.zip").write_bytes(os.urandom(4096))
    summary, ranking = _run(zoo, target, first_run["store"], tmp_path / "out", reports=False, retries=1)
    assert (summary.scored, summary.cached) == (0, 3)
    assert [(f.model, f.target) for f in summary.failed] == [("broken", TARGET)]
    assert "broken.zip" in summary.failed[0].reason
    assert _order(ranking) == _order(first_run["ranking"])
    assert [f["name"] for f in ranking["failures"]] == ["broken"]

    from bioimage_cte.run.store import ResultStore

    failed = ResultStore(first_run["store"]).records(status="failed")
    assert [r.name for r in failed.values()] == ["broken"] and "broken.zip" in next(iter(failed.values())).error


def test_unusable_targets_are_listed_and_the_others_ranked(first_run, target, tmp_path):
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    empty = tmp_path / "empty-target"
    (empty / "images").mkdir(parents=True)
    missing = tmp_path / "missing-target"
    run = ZooRunOptions(store_path=str(first_run["store"]), output_dir=str(tmp_path / "out"), reports=False)
    summary = run_zoo_ranking(first_run["zoo"], [missing, target, empty], RankOptions(estimator="cte-dropout"),
                              run=run)
    assert list(summary.rankings) == [TARGET] and (summary.scored, summary.cached) == (0, 3)
    assert sorted(summary.problems) == sorted([str(missing), str(empty)])
    assert "is not a folder" in summary.problems[str(missing)]
    assert "no images found" in summary.problems[str(empty)]


def test_dask_local_cluster_gives_the_same_ranking(first_run, target, tmp_path):
    zoo = _zoo(tmp_path / "zoo")
    summary, ranking = _run(zoo, target, tmp_path / "fresh.sqlite", tmp_path / "out", reports=False,
                            dask_address="local", workers=2)
    assert (summary.scored, summary.cached, summary.failed) == (3, 0, ())
    expected = _order(first_run["ranking"])
    assert [n for n, _ in _order(ranking)] == [n for n, _ in expected]
    assert [s for _, s in _order(ranking)] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_bad_input_is_not_retried():
    from prefect.states import Failed

    from bioimage_cte.base.errors import InvalidModelError
    from bioimage_cte_flows.zoo_ranking import _worth_retrying

    assert _worth_retrying(None, None, Failed(data=RuntimeError("out of memory"))) is True
    assert _worth_retrying(None, None, Failed(data=InvalidModelError("x.zip is not a valid zip"))) is False


def test_bad_input_corpus_in_a_zoo_run(prefect_harness, corpus, tmp_path):
    """One flow run over the whole bad-input corpus: every bad package is recorded with its reason, the good rank."""
    from corpus import MODELS, NOT_FITTING, RANKED_WITHOUT_ITS_CODE, SKIPPED_BY_GREYBOX

    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, run_zoo_ranking

    run = ZooRunOptions(store_path=str(tmp_path / "r.sqlite"), output_dir=str(tmp_path / "out"), reports=False,
                        retries=0)
    from bioimage_cte.run.options import RankOptions

    summary = run_zoo_ranking(corpus.zoo, [corpus.good_images], RankOptions(estimator="cte-dropout"), run=run)
    ranking = json.loads(Path(summary.rankings[corpus.good_images.name]).read_text())
    assert sorted(m["name"] for m in ranking["models"]) == sorted(["good-file-arch", "good-library-arch",
                                                                   RANKED_WITHOUT_ITS_CODE])
    reasons = {f["name"]: f["reason"] for f in ranking["failures"]}
    assert sorted(reasons) == sorted(set(MODELS) - set(NOT_FITTING))
    # a 3D model and an RGB model on 2D grey images: left out before scoring, with the reason, and not failed
    reasons |= {u["model"]: u["reason"] for u in ranking["not_fitting"]}
    assert sorted(u["model"] for u in ranking["not_fitting"]) == sorted(NOT_FITTING)
    for name, (_, expected) in MODELS.items():
        assert expected in reasons[name] and str(corpus.package(name)) in reasons[name], name
    # models that load but may not run package code are scored as skipped by the grey-box estimator, not failed
    loadable = set(SKIPPED_BY_GREYBOX) | {"pickle-weights"}
    assert sorted(f.model for f in summary.failed) == sorted(set(MODELS) - loadable - set(NOT_FITTING))
    assert not corpus.marker.exists() and not corpus.pickle_marker.exists()


# ------------------------------------------------------------------------ operations: timeouts, final state, hook

_HANGS = """

# a model whose forward pass never returns (in Python steps, as a stuck data loader or retry loop would)
import time as _time

_Base = UNet2d


class UNet2d(_Base):
    def forward(self, x):
        while True:
            _time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def hanging_package(tmp_path_factory) -> Path:
    """A real package (demo builder) whose architecture file hangs in forward; it runs only with trust_code."""
    import numpy as np
    from corpus import DEPTH, FEATURES, _net, _rewrite

    from bioimage_cte.demozoo.packaging import ARCHITECTURE_FILE, PackageInfo, build_package

    work = tmp_path_factory.mktemp("hanging")
    image = np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32)
    base = build_package(_net(1), image, work / "base.zip", info=PackageInfo("hangs", "Never returns.",
                         tags=("segmentation", "nuclei")), preprocessing="zero_mean_unit_variance",
                         outputs="foreground", features=FEATURES, depth=DEPTH)
    hangs = ARCHITECTURE_FILE.read_bytes() + _HANGS.encode()
    return _rewrite(base, work / "hangs-forever.zip", files={"unet.py": hangs})


@pytest.fixture()
def webhook():
    """A local HTTP endpoint that keeps what is POSTed to it (a stand-in for a Slack/Teams incoming webhook)."""
    import http.server
    import threading

    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (the name http.server calls)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def test_hung_model_is_stopped_recorded_and_counted(prefect_harness, target, hanging_package, webhook, tmp_path):
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.store import ResultStore
    from bioimage_cte_flows.zoo_ranking import ZooRunOptions, zoo_ranking_flow

    url, received = webhook
    zoo = _zoo(tmp_path / "zoo", models=MODELS[:1])
    shutil.copy(hanging_package, zoo)
    store = tmp_path / "r.sqlite"
    # A limit generous for the good model (about 7 s cold, more on a busy machine): only a model that never
    # returns reaches it. A timeout is not retried, so this run lasts about one limit.
    limit = 60
    run = ZooRunOptions(store_path=str(store), output_dir=str(tmp_path / "out"), reports=False, retries=1,
                        failure_webhook=url)
    options = RankOptions(trust_code=True, time_limit=limit).to_json_dict()
    state = zoo_ranking_flow(str(zoo), [str(target)], options, dataclasses.asdict(run), return_state=True)

    assert state.is_completed()
    assert state.message.startswith("1 of 2 model x target pairs failed") and f"{TARGET}: 1 models" in state.message
    summary = state.result()
    assert [(f.model, f.target) for f in summary.failed] == [("hangs-forever", TARGET)]
    assert f"hangs-forever on {TARGET}: timed out after {limit} s and was stopped" in summary.failed[0].reason
    ranking = json.loads(Path(summary.rankings[TARGET]).read_text())
    assert [m["name"] for m in ranking["models"]] == [MODELS[0]]
    assert "timed out" in ranking["failures"][0]["reason"]
    record = next(iter(ResultStore(store).records(status="failed").values()))
    assert record.name == "hangs-forever" and "timed out" in record.error
    # the failure hook got the same news
    assert len(received) == 1 and received[0]["state"] == "Completed" and "1 of 2" in received[0]["text"]
    assert received[0]["failed"][0]["model"] == "hangs-forever"
    assert _run_name(state) == f"zoo on {TARGET}"  # named from its zoo and targets, not a random name

    # nothing left to rank: the run ends Failed, with the same count (no good model here: a short limit will do)
    alone = _zoo(tmp_path / "alone", models=())
    shutil.copy(hanging_package, alone)
    short = RankOptions(trust_code=True, time_limit=3).to_json_dict()
    state = zoo_ranking_flow(str(alone), [str(target)], short, dataclasses.asdict(run), return_state=True)
    assert state.is_failed() and state.message.startswith("nothing ranked: 1 of 1 model x target pairs failed")
    assert len(received) == 2 and received[1]["state"] == "Failed"


def _run_name(state) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def test_unreachable_dask_address_is_one_line_within_seconds():
    import socket

    from bioimage_cte_flows.zoo_ranking import make_task_runner

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        make_task_runner(f"tcp://127.0.0.1:{port}")
