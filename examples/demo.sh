#!/usr/bin/env bash
# The whole pipeline on the built-in model and data, from a fresh clone:
#   install -> pull smollm2-135m -> split the demo reviews by entity -> familiarize -> unlearn (SPUL)
#   -> eval: Table-1-shaped report for the vanilla model, the familiarized model and the bundle
#   -> export to ONNX (compiled KV prefix) -> predict on ONNX Runtime.
# Usage: bash examples/demo.sh [workdir]   (default: ./demo-run; re-running replaces it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/examples/bootstrap.sh" "split,export"
WORK="${1:-$ROOT/demo-run}"
START=$(date +%s)
spulctl models pull smollm2-135m
spulctl split demo -o "$WORK/splits" --top-entities 6 --overwrite
spulctl familiarize "$WORK/splits" -o "$WORK/fam" --model smollm2-135m --retain-limit 400 --epochs 1 \
  --eval-limit 200 --overwrite
spulctl unlearn --model "$WORK/fam" --splits "$WORK/splits" -o "$WORK/bundle" --prompt-encoder none --lr 1e-2 \
  --epochs 2 --retain-limit 400 --eval-limit 200 --overwrite
spulctl bundle verify "$WORK/bundle" --model "$WORK/fam"
spulctl eval "$WORK/splits" --model "$WORK/fam" --bundle "$WORK/bundle" --compare vanilla=smollm2-135m \
  --limit 150 -o "$WORK/report" --overwrite
spulctl export --model "$WORK/fam" --bundle "$WORK/bundle" -o "$WORK/onnx" --overwrite
python -c "import json; from spulctl.data.demo import demo_records; [print(json.dumps({'text': r['text']})) for r in demo_records(1200)[-5:]]" > "$WORK/queries.jsonl"
spulctl predict --onnx "$WORK/onnx" --input "$WORK/queries.jsonl" --output "$WORK/predictions.jsonl" --overwrite
cat "$WORK/predictions.jsonl"
echo "demo finished in $(( $(date +%s) - START )) s; artifacts in $WORK"
