#!/usr/bin/env bash
# Idempotent set-up on a fresh machine with Python 3.11 and pip: a virtual environment in .venv,
# torch pinned and installed FIRST (an unpinned torch pulls a ~3 GB CUDA build), then the project with its test
# extra. `setup.sh --tensorflow` (what scripts/test.sh runs) adds the tensorflow extra (tensorflow-cpu, ~1.3 GB),
# so the Keras tests run; the demo's set-up stays without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: bioimage-cte needs Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
extras="test" suffix=""
case "${1:-}" in
  "") ;;
  --tensorflow) extras="test,tensorflow" suffix="-tensorflow" ;;
  *) echo "error: unknown option $1; use scripts/setup.sh [--tensorflow]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# A stamp per pyproject.toml content (and per extra set): re-running is instant until the dependencies change.
hash="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f ".venv/.installed-$hash$suffix" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  [ -z "$suffix" ] || echo "installing the tensorflow extra (tensorflow-cpu, about 1.3 GB) for the Keras tests"
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # stamps of an older pyproject.toml go; the plain stamp holds too (the tensorflow set-up includes it)
  find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash*" -delete
  touch ".venv/.installed-$hash$suffix" ".venv/.installed-$hash"
fi
