#!/usr/bin/env bash
# Ship check: build the sdist and the wheel, install the wheel (not editable) into a fresh virtualenv and, from a
# directory outside the checkout, run the pipeline with the installed `spulctl` on a tiny random Llama:
# split -> unlearn -> bundle verify -> eval -> export -> predict.
# The fresh venv gets the package only (--no-deps); a .pth line lets it import the dependencies already installed in
# the current environment (.venv), so nothing is downloaded. Run with .venv active (tests/run.sh does).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spulctl-wheel-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
say() { printf '[wheel smoke] %s\n' "$*"; }

say "building the sdist and the wheel (wheel built from the sdist)"
python -m build --no-isolation --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 \
  || { tail -20 "$WORK/build.log"; exit 1; }
wheel=("$WORK"/dist/spulctl-*.whl)

say "installing ${wheel[0]##*/} into a fresh virtualenv"
python -m venv "$WORK/fresh"
"$WORK/fresh/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "${wheel[0]}"
deps="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fresh_site="$("$WORK/fresh/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$fresh_site/_spulctl_smoke_deps.pth"  # appended after the fresh site-packages: spulctl comes from it

cd "$WORK"  # outside the checkout: nothing can be imported from the source tree
PY="$WORK/fresh/bin/python"
SPULCTL="$WORK/fresh/bin/spulctl"
"$PY" - "$fresh_site" <<'PYEOF'
import sys
from pathlib import Path

import spulctl
import spulctl.cli
import spulctl.export.runtime
import spulctl.kernels.answer_head_loss
import spulctl.methods

site = Path(sys.argv[1]).resolve()
for module in (spulctl, spulctl.kernels.answer_head_loss, spulctl.methods, spulctl.export.runtime, spulctl.cli):
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(site), f"{module.__name__} imported from {where}, not from the fresh venv {site}"
print(f"[wheel smoke] spulctl {spulctl.__version__} imported from {Path(spulctl.__file__).parent}")
PYEOF
"$SPULCTL" --version

say "tiny model"
"$PY" "$ROOT/tests/wheel_smoke_model.py" tiny
say "split"
"$SPULCTL" split demo -o splits --entities "Yuki Tanabe" > split.log
say "unlearn"
"$SPULCTL" unlearn --model tiny --splits splits -o bundle -p 4 --epochs 1 --max-steps 2 --batch-size 8 \
  --retain-limit 32 --eval-limit 8 > unlearn.log
say "bundle verify"
"$SPULCTL" bundle verify bundle --model tiny
say "eval"
"$SPULCTL" eval splits --model tiny --bundle bundle --limit 8 -o report > eval.log
test -s report/report.json
say "export"
"$SPULCTL" export --model tiny --bundle bundle -o onnx > export.log
printf '{"text": "A fine film with a luminous touch."}\n{"text": "Yuki Tanabe directs it."}\n' > queries.jsonl
say "predict"
"$SPULCTL" predict --onnx onnx --input queries.jsonl > predictions.jsonl
"$PY" - <<'PYEOF'
import json

rows = [json.loads(line) for line in open("predictions.jsonl")]
assert len(rows) == 2 and all({"text", "label", "answer", "scores"} <= set(r) for r in rows), rows
assert all("top1" not in r for r in rows), rows
print(f"[wheel smoke] ok: {len(rows)} predictions, e.g. answer {rows[0]['answer']!r}")
PYEOF
