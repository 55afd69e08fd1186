#!/usr/bin/env bash
# Set up, then run the whole test suite (unit, doctests, the demo zoo end to end) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium renders the HTML report in one test; without it that test is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed"
fi
export TQDM_DISABLE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/ruff check .
.venv/bin/python -m pytest --doctest-modules bioimage_cte tests "$@"
