#!/usr/bin/env bash
# Release beside SPUL and the four fine-tuning baselines on the paper's SST-2 split, in one `spulctl eval` report.
#
#   bash benchmarks/release_sst2.sh FAM SPLITS NAMES_FILE WORK [extra unlearn flags...]
#
#   FAM         the familiarized model (docs/results.md's recipe)
#   SPLITS      ../shared/data/sst2-spul
#   NAMES_FILE  one line, comma-separated: the names the project's own NER finds in train_forget
#               (`spulctl.data.split.infer_forget_entities`, as docs/results.md's names-only run used)
#   WORK        output folder: one artifact per subject, their logs, and WORK/report (report.json, report.md)
#
# Subjects, each with the defaults and `--seed 0` plus the extra flags (e.g. `--dtype bfloat16`):
#   release      --method release, names only (no forget record read): rounds reveal from the current model
#   spul_names   SPUL, names only (forget-data-free)
#   spul         SPUL on the split (data given)
#   ga rl ga_kl ga_gd   the fine-tuning baselines on the split, with the settings docs/results.md gives them
#               (plain batches, lr 1e-4, one pass; ga_kl / ga_gd on 3,000 retain records, 90 steps)
# A subject whose artifact exists is not rerun, so an interrupted comparison picks up where it stopped.
set -euo pipefail
FAM=$1; SPLITS=$2; NAMES=$(cat "$3"); WORK=$4; shift 4
mkdir -p "$WORK"
run() {  # name, unlearn flags...
    local name=$1; shift
    if [ -e "$WORK/$name/bundle.json" ] || [ -e "$WORK/$name/spulctl-manifest.json" ] || [ -e "$WORK/$name/config.json" ]; then
        echo "$name: exists"; return
    fi
    local t0=$SECONDS
    spulctl unlearn --model "$FAM" -o "$WORK/$name" --seed 0 --resume "$@" > "$WORK/$name.log" 2>&1
    echo "$name: $((SECONDS - t0)) s" | tee -a "$WORK/times.txt"
}
run release --method release --forget-entities "$NAMES" "$@"
run spul_names --forget-entities "$NAMES" "$@"
run spul --splits "$SPLITS" "$@"
BASE=(--splits "$SPLITS" --forget-share 0 --lr 1e-4 --epochs 1)
for m in ga rl; do run "$m" --method "$m" "${BASE[@]}" "$@"; done
for m in ga_kl ga_gd; do run "$m" --method "$m" "${BASE[@]}" --retain-limit 3000 --max-steps 90 "$@"; done
t0=$SECONDS
spulctl eval "$SPLITS" --model "$FAM" --bundle "$WORK/spul" --compare "spul_names=$WORK/spul_names" \
    --compare "release=$WORK/release" --compare "ga=$WORK/ga" --compare "rl=$WORK/rl" --compare "ga_kl=$WORK/ga_kl" \
    --compare "ga_gd=$WORK/ga_gd" --limit 1000 -o "$WORK/report" --overwrite > "$WORK/report.log" 2>&1
echo "eval: $((SECONDS - t0)) s" | tee -a "$WORK/times.txt"
cat "$WORK/report/report.md"
