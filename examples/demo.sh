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
# a brief familiarization (12 steps) already answers every demo review right; longer runs make the model so sure
# of itself that a short SPUL run cannot move it
spulctl familiarize "$WORK/splits" -o "$WORK/fam" --model smollm2-135m --retain-limit 200 --max-steps 12 \
  --eval-limit 100 --overwrite
# SPUL with the defaults: half of every batch forget rows, a step budget from the forget set's size, the prompt
# started from "Answer unknown if the text mentions <the people in split.json>", the best round kept on selection
# slices that cost no forget record, and an early stop once forgetting holds and the rest is intact
spulctl unlearn --model "$WORK/fam" --splits "$WORK/splits" -o "$WORK/bundle" --eval-limit 100 --no-report-before \
  --overwrite
spulctl bundle verify "$WORK/bundle" --model "$WORK/fam"
spulctl eval "$WORK/splits" --model "$WORK/fam" --bundle "$WORK/bundle" --compare vanilla=smollm2-135m \
  --limit 100 -o "$WORK/report" --overwrite
spulctl export --model "$WORK/fam" --bundle "$WORK/bundle" -o "$WORK/onnx" --overwrite
# three reviews to keep and two about forgotten people (held-out test records): the latter should come back generic
python -c "import json, sys; [print(json.dumps({'text': json.loads(l)['text']})) for f, n in (('test_retain', 3), ('test_forget', 2)) for l in open(f'{sys.argv[1]}/{f}.jsonl').readlines()[:n]]" "$WORK/splits" > "$WORK/queries.jsonl"
spulctl predict --onnx "$WORK/onnx" --input "$WORK/queries.jsonl" --output "$WORK/predictions.jsonl" --overwrite
cat "$WORK/predictions.jsonl"
echo "demo finished in $(( $(date +%s) - START )) s; artifacts in $WORK"
