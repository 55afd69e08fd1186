"""The temporary Prefect server of a zoo run, which must never outlive the run, even one killed with SIGKILL.

Prefect starts its temporary server as a child process and stops it at exit; a run killed with SIGKILL never
gets there and the server keeps running. Here the server is started by the run itself
(:func:`temporary_server`), and two things make sure it goes with the run:

- a watchdog process (tiny, stdlib only) that stops the server as soon as the run's process is gone; it knows
  this because it is the run's child and is handed over to another parent when the run dies;
- a record per server under ``$PREFECT_HOME/bioimage-cte-servers/``: the next run stops every recorded server
  whose run is gone (if the watchdog was killed too, e.g. by ``kill -9`` on the whole group but one).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.server.api.server import SubprocessASGIServer

__all__ = ["reap_orphaned_servers", "server_records", "temporary_server"]

# the server's command line holds this: a pid that was reused by another program is never signalled
_SERVER_MARK = "prefect.server.api.server:create_app"

# Runs as `python -c WATCHDOG <run pid> <server pid>`: polls until it is handed to another parent (its run died),
# then stops the server (terminate, then kill after 5 s). Exits with the server when the run stops it normally.
_WATCHDOG = """
import os, signal, sys, time
run, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
while os.getppid() == run and alive(server):
    time.sleep(0.2)
if alive(server):
    os.kill(server, signal.SIGTERM)
    for _ in range(50):
        time.sleep(0.1)
        if not alive(server):
            break
    else:
        os.kill(server, signal.SIGKILL)
"""


def _records_dir() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser() / "bioimage-cte-servers"


def server_records() -> list[dict[str, Any]]:
    """The recorded servers (``{"server": pid, "run": pid, "port": int}``), oldest first."""
    folder = _records_dir()
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            records.append({**json.loads(path.read_text()), "file": str(path)})
    return records


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            time.sleep(0.1)
            if _cmdline(pid) is None:
                return
        os.kill(pid, signal.SIGKILL)


def reap_orphaned_servers() -> list[int]:
    """Stop every recorded temporary server whose run is gone; returns their pids.

    A server counts as orphaned when its process still runs Prefect's server but its parent is no longer the
    run that started it. Works where ``/proc`` exists (Linux); elsewhere the watchdog alone stops servers.
    """
    stopped = []
    for record in server_records():
        server, run = int(record["server"]), int(record["run"])
        command = _cmdline(server)
        if command is not None and _SERVER_MARK in command and _parent(server) != run:
            _stop(server)
            stopped.append(server)
        if command is None or _SERVER_MARK not in command or server in stopped:
            with contextlib.suppress(OSError):
                Path(record["file"]).unlink()
    return stopped


class _OwnedServer(SubprocessASGIServer):
    """Prefect's temporary server, recorded and watched from the moment its process exists."""

    _instances: dict[int | None, Any] = {}  # not shared with Prefect's own singletons

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        process = super()._run_uvicorn_command()
        folder = _records_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.record = folder / f"{process.pid}.json"
        self.record.write_text(json.dumps({"server": process.pid, "run": os.getpid(), "port": self.port}))
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(process.pid)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        return process

    def stop(self) -> None:
        super().stop()
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=10)  # it exits once the server is gone
        record = getattr(self, "record", None)
        if record is not None:
            with contextlib.suppress(OSError):
                record.unlink()


@contextlib.contextmanager
def temporary_server() -> Iterator[str]:
    """A temporary Prefect server for one run (its API URL), after stopping the servers of killed runs."""
    reap_orphaned_servers()
    server = _OwnedServer()
    try:
        server.start()
        yield server.api_url
    finally:
        server.stop()
