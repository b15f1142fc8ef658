#!/usr/bin/env bash
# Create or update .venv from the uv lock. `scripts/setup.sh --dev` adds the test tools and the
# system packages the tests need (Debian chromium for the UI screenshots).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "poleng needs Python 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv ..."
  "$PYTHON" -m pip install --quiet --disable-pip-version-check uv \
    || "$PYTHON" -m pip install --quiet --disable-pip-version-check --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi

# Imports are byte-compiled at install time: the machines set PYTHONDONTWRITEBYTECODE=1, and
# without .pyc files every process would recompile mlflow/evidently/xgboost (~10 s each time).
export UV_COMPILE_BYTECODE=1
[ -x .venv/bin/python ] || uv venv --quiet -p "$PYTHON" .venv
locks=(-r requirements.txt)
[ "${1:-}" = "--dev" ] && locks+=(-r requirements-dev.txt)
# overrides.txt: see the comment in that file (mage-ai's stale pins).
uv pip install --quiet -p .venv/bin/python "${locks[@]}" --override overrides.txt
uv pip install --quiet -p .venv/bin/python --no-deps -e .

if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser tests ..."
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "environment ready: .venv ($(.venv/bin/python --version))"
