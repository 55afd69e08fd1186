"""Prefect flows around the bioimage_cte library.

Flows here are thin: they find inputs, fan work out to tasks, and call library functions for
everything else. The library (``bioimage_cte``) never imports prefect; only this package does.

- :mod:`bioimage_cte_flows.zoo_ranking` (this folder installs as ``bioimage_cte_flows``): rank every model of a
  zoo on every target, incrementally, with a results store (``bioimage-cte zoo-rank --help``).

Importing this package sets the project's Prefect settings (:data:`PREFECT_SETTINGS`) as environment variables,
before Prefect is imported, wherever the run starts: no ``prefect.toml`` in the current folder is needed. A
variable the user set is left alone.
"""

from __future__ import annotations

import os

__all__ = ["PREFECT_SETTINGS", "use_project_prefect_settings"]

#: Prefect settings of the project: offline (no telemetry) and quiet (warnings only).
PREFECT_SETTINGS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # server-side telemetry: a local run's only outbound connection
    "DO_NOT_TRACK": "1",  # the SDK's analytics (not a Prefect setting)
    "PREFECT_LOGGING_LEVEL": "WARNING",  # flow and task loggers: failed models and write-back problems only
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # the default 20 s is tight on 2 busy cores
}
_SET_BY_USER = frozenset(k for k in PREFECT_SETTINGS if k in os.environ)


def use_project_prefect_settings(*, debug: bool = False) -> None:
    """Set the project's Prefect settings, before Prefect is imported; the user's own variables win.

    Without ``debug`` Prefect logs only critical messages: a failing flow's traceback is not printed (the
    command prints one line), and failed models are listed by the command itself.
    """
    for key, value in PREFECT_SETTINGS.items():
        if key not in _SET_BY_USER:
            os.environ[key] = value
    if "PREFECT_LOGGING_LEVEL" not in _SET_BY_USER:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING" if debug else "CRITICAL"


for _key, _value in PREFECT_SETTINGS.items():
    os.environ.setdefault(_key, _value)
