#!/usr/bin/env bash
# Set up (with the tensorflow extra, so the Keras tests run), then run the whole test suite (unit, doctests, the
# demo zoo end to end) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tensorflow
# Headless Chromium renders the HTML report in one test; without it that test is skipped with its reason.
# Run as root, this installs the system package chromium through apt, and says so first;
# BIOIMAGE_CTE_NO_SYSTEM=1 skips every system install.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "${BIOIMAGE_CTE_NO_SYSTEM:-0}" = 1 ]; then
    echo "chromium: not installed (BIOIMAGE_CTE_NO_SYSTEM=1); the browser test will be skipped"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing the system package chromium with apt-get for the browser test" \
         "(set BIOIMAGE_CTE_NO_SYSTEM=1 to skip)"
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed"
  else
    echo "chromium: not installed (needs root and apt-get); the browser test will be skipped"
  fi
fi
export TQDM_DISABLE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/ruff check .
# the doctests of the library and of the Prefect flows (flows/ installs as bioimage_cte_flows; collected here from
# the folder, as flows.*), and the tests. Two workers (pytest-xdist), each test file on one of them: run one after
# another the tests keep one core busy on average (they wait for child processes, servers and time limits).
.venv/bin/python -m pytest -n "${BIOIMAGE_CTE_TEST_WORKERS:-2}" --dist loadfile --doctest-modules bioimage_cte tests flows "$@"
