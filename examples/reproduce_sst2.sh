#!/usr/bin/env bash
# The paper's SST-2 protocol on the built-in SmolLM2 (the paper used Llama-2/OPT: pass MODEL=llama-2-7b with a
# local copy): familiarize on train_forget ∪ train_retain, unlearn with SPUL and the four baselines, then one
# Table-1-shaped report for vanilla, familiarized, SPUL and the baselines.
#
#   bash examples/reproduce_sst2.sh [--quick] [DATA_DIR] [WORK_DIR]
#
# --quick (CPU): a 3,000-record retain subset, fewer epochs, 1,000 test_retain records in the report.
set -euo pipefail
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
DATA="${1:-../shared/data/sst2-spul}"
WORK="${2:-runs/reproduce}"
MODEL="${MODEL:-smollm2-135m}"
if [ "$QUICK" = 1 ]; then
  FAM=(--retain-limit 3600 --eval-limit 1000); UNL=(--retain-limit 3000 --epochs 3 --prompt-encoder none --lr 1e-2)
  BASE=(--retain-limit 3000 --epochs 1 --max-steps 90); LIMIT=(--limit 1000)
else
  FAM=(--eval-limit 0); UNL=(); BASE=(--epochs 1); LIMIT=()
fi
spulctl models pull smollm2-135m || true
spulctl familiarize "$DATA" -o "$WORK/fam" --model "$MODEL" "${FAM[@]}" --overwrite
spulctl unlearn --model "$WORK/fam" --splits "$DATA" -o "$WORK/spul" "${UNL[@]}" --eval-limit 0 --overwrite
for m in ga rl ga_kl ga_gd; do
  spulctl unlearn --method "$m" --model "$WORK/fam" --splits "$DATA" -o "$WORK/$m" --lr 1e-4 "${BASE[@]}" \
    --eval-limit 0 --overwrite
done
spulctl eval "$DATA" --model "$WORK/fam" --bundle "$WORK/spul" --compare "vanilla=$MODEL" \
  --compare "ga=$WORK/ga" --compare "rl=$WORK/rl" --compare "ga_kl=$WORK/ga_kl" --compare "ga_gd=$WORK/ga_gd" \
  "${LIMIT[@]}" --mia --plots "$WORK/report/plots" -o "$WORK/report" --overwrite
