#!/usr/bin/env bash
# Set up, then rank the shipped demo zoo on the real DSB2018 fluorescence-nuclei images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bioimage-cte rank resources/zoo --images resources/data/dsb2018/images --output out/dsb2018-ranking.json "$@"
