#!/usr/bin/env bash
# Install spulctl with the test extras into .venv, run ruff and the whole test suite (fast + slow), then the ship
# check: build the sdist and wheel, install the wheel into a fresh virtualenv and run the pipeline with it
# (tests/wheel_smoke.sh; SPULCTL_SKIP_WHEEL_SMOKE=1 skips it).
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/examples/bootstrap.sh" "split,qlora,plots,export,kernels,dev"
cd "$ROOT"
ruff check spulctl kernels tests benchmarks
TRITON_INTERPRET=1 pytest -q "$@"
if [ "${SPULCTL_SKIP_WHEEL_SMOKE:-0}" != "1" ]; then
  bash "$ROOT/tests/wheel_smoke.sh"
fi
