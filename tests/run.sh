#!/usr/bin/env bash
# Install spulctl with the test extras into .venv and run the whole test suite (fast + slow).
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/examples/bootstrap.sh" "split,qlora,plots,export,kernels,dev"
cd "$ROOT"
ruff check spulctl kernels tests benchmarks
TRITON_INTERPRET=1 pytest -q "$@"
