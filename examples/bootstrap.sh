#!/usr/bin/env bash
# Create (or reuse) .venv and install spulctl with the given extras. Sourced by examples/demo.sh and tests/run.sh.
# torch goes in first, pinned to 2.13.0 where that build is at hand (a local CPU wheel on our machines), so that
# nothing later pulls a multi-GB CUDA build by accident; elsewhere any torch>=2.4 does.
set -euo pipefail
EXTRAS="${1:-split,dev}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPULCTL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --disable-pip-version-check --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
    || python -m pip install --quiet --disable-pip-version-check "torch>=2.4"
fi
python -m pip install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]"
