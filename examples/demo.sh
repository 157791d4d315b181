#!/usr/bin/env bash
# The whole pipeline on the built-in model and data, from a fresh clone:
#   install -> pull smollm2-135m -> split the demo reviews by entity -> familiarize -> unlearn (SPUL), once with
#   the split's retain data and once from the forget file alone
#   -> eval: Table-1-shaped report for the vanilla model, the familiarized model and both bundles
#   -> export to ONNX (compiled KV prefix) -> predict on ONNX Runtime.
# Usage: bash examples/demo.sh [workdir]   (default: ./demo-run; re-running replaces it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/examples/bootstrap.sh" "split,export"
WORK="${1:-$ROOT/demo-run}"
START=$(date +%s)
# the frozen model in bf16 where the CPU multiplies bf16 natively (2.7x faster there, docs/benchmarks.md); else auto
DTYPE=$(python -c "import torch; print('bfloat16' if not torch.cuda.is_available() and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'auto')")
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
  --dtype "$DTYPE" --overwrite
spulctl bundle verify "$WORK/bundle" --model "$WORK/fam"
# what a user holding only the forget file runs: no retain data. The model writes its own on-task retain texts off
# the target (in the forget file's form) and labels them, beside the pieces of the forget texts that name nobody
spulctl unlearn --model "$WORK/fam" --forget "$WORK/splits/train_forget.jsonl" -o "$WORK/bundle-forget-only" \
  --eval-limit 0 --no-report-before --dtype "$DTYPE" --overwrite
spulctl eval "$WORK/splits" --model "$WORK/fam" --bundle "$WORK/bundle" --compare forget_only="$WORK/bundle-forget-only" \
  --compare vanilla=smollm2-135m --limit 100 --dtype "$DTYPE" -o "$WORK/report" --overwrite
spulctl export --model "$WORK/fam" --bundle "$WORK/bundle" -o "$WORK/onnx" --overwrite
# three reviews to keep and two about forgotten people (held-out test records): the latter should come back generic
python -c "import json, sys; [print(json.dumps({'text': json.loads(l)['text']})) for f, n in (('test_retain', 3), ('test_forget', 2)) for l in open(f'{sys.argv[1]}/{f}.jsonl').readlines()[:n]]" "$WORK/splits" > "$WORK/queries.jsonl"
spulctl predict --onnx "$WORK/onnx" --input "$WORK/queries.jsonl" --output "$WORK/predictions.jsonl" --overwrite
cat "$WORK/predictions.jsonl"
echo "demo finished in $(( $(date +%s) - START )) s; artifacts in $WORK"
