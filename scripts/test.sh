#!/usr/bin/env bash
# Set up, then run the whole test suite (unit, doctests, the demo zoo end to end) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TQDM_DISABLE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/ruff check .
.venv/bin/python -m pytest --doctest-modules bioimage_cte tests "$@"
