"""A weekly zoo-ranking deployment gets scheduled flow runs from a real Prefect server.

Schedules need a real server: the temporary (ephemeral) one and prefect_test_harness run no
scheduler service. This starts `prefect server start` on a free loopback port with a temporary
PREFECT_HOME, registers the zoo-ranking flow with a cron schedule (what `serve --cron` does,
without running anything), and waits for the server's scheduler to create SCHEDULED runs.
With SQLAlchemy 2.1 under prefect 3.8.8 the scheduler fails on every loop ("Can't evaluate bulk
DML statement") and no run ever appears; pyproject.toml pins sqlalchemy<2.1 for that.
About 15-30 s: mostly server start-up and migrations.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # 'flows' lives next to the package, not inside it
    sys.path.insert(0, str(ROOT))

CRON, TIMEZONE = "0 3 * * 1", "Europe/Berlin"  # Mondays 03:00 Berlin time, as in the README
STARTUP_TIMEOUT = 90  # seconds until /api/health answers (15-25 s on 2 busy cores)
SCHEDULE_TIMEOUT = 60  # seconds for the scheduler to create runs (it loops every 5 s for new deployments)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server (with its scheduler) on 127.0.0.1; yields (api_url, log path)."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-server-home")
    log_path = home / "server.log"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    with open(log_path, "wb") as log:
        # own process group: the whole server tree is stopped below, whatever happens in the test
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-ui"], cwd=home, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not up after {STARTUP_TIMEOUT} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield api_url, log_path
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_weekly_deployment_gets_scheduled_runs(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bioimage_cte_flows.zoo_ranking import zoo_ranking_flow

    api_url, log_path = prefect_server
    parameters = {"zoo": str(ROOT / "resources" / "zoo"), "targets": [str(ROOT / "resources" / "data" / "dsb2018")],
                  "run": {"output_dir": str(tmp_path / "out"), "store_path": str(tmp_path / "results.sqlite")}}
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        # the deployment `bioimage-cte zoo-rank --cron ... --timezone ...` registers; nothing runs it
        deployment = zoo_ranking_flow.to_deployment(name="weekly", parameters=parameters, tags=["bioimage-cte"],
                                                    schedule=Cron(CRON, timezone=TIMEZONE))
        deployment_id = deployment.apply()

        runs = []
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + SCHEDULE_TIMEOUT
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))

    log = _tail(log_path)
    assert runs, (f"no SCHEDULED run for the deployment after {SCHEDULE_TIMEOUT} s; the server's scheduler "
                  f"failed? (SQLAlchemy 2.1 under prefect 3.8.8: pin sqlalchemy<2.1). Server log:\n{log}")
    starts = sorted(run.expected_start_time.astimezone(ZoneInfo(TIMEZONE)) for run in runs)
    for start in starts:
        assert (start.weekday(), start.hour, start.minute, start.second) == (0, 3, 0, 0), start
    assert all(b - a >= timedelta(days=6) for a, b in zip(starts, starts[1:], strict=False)), starts
    assert all(run.parameters["zoo"] == parameters["zoo"] for run in runs)
    assert "Can't evaluate bulk DML" not in log
