#!/usr/bin/env bash
# Rebuild docs/report.png: the demo's HTML report (nuclei models on the DSB2018 images, 3 images with overlays)
# rendered by headless Chromium. About 3-4 minutes on 2 cores. Needs /usr/bin/chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export TQDM_DISABLE=1
.venv/bin/bioimage-cte rank resources/zoo --tag nuclei --images resources/data/dsb2018/images \
  --output "$out/ranking.json" --report "$out/report.html" --report-images 3
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$out/chromium" --hide-scrollbars \
  --window-size=1400,4600 --screenshot=docs/report.png "file://$out/report.html"
echo "docs/report.png written"
