#!/usr/bin/env bash
# Set up, then rank the demo zoo's nuclei models on the real DSB2018 fluorescence-nuclei images,
# writing the ranking (JSON) and an HTML report to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bioimage-cte rank resources/zoo --tag nuclei --images resources/data/dsb2018/images \
    --output out/dsb2018-ranking.json --report out/dsb2018-ranking.html "$@"
