#!/usr/bin/env bash
# Rebuild docs/leaderboard.png: the leaderboard of the whole demo zoo on every shipped target (zoo-rank with
# --match-task, 31 packages x 8 targets), rendered by headless Chromium. Scores come from the results store
# (--store, default ~/.cache/bioimage-cte/results.sqlite): a first run scores the 95 pairs that fit (minutes on 2
# cores), a re-run only renders. Needs /usr/bin/chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export TQDM_DISABLE=1
.venv/bin/bioimage-cte zoo-rank resources/zoo resources/data/*/ --match-task --output-dir "$out/zoo" "$@"
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$out/chromium" --hide-scrollbars \
  --window-size=1400,1500 --screenshot=docs/leaderboard.png "file://$out/zoo/leaderboard.html"
echo "docs/leaderboard.png written"
