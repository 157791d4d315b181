#!/usr/bin/env bash
# The three GLUE SST-2 entity splits that docs/results.md checks the defaults on ("The defaults on four splits ×
# three seeds"): different people, forget sets of 91, 334 and 1,171 training records.
#
#   bash benchmarks/make_glue_splits.sh [GLUE_TRAIN_TSV] [OUT_DIR]
set -euo pipefail
TSV=${1:-../shared/data/glue-sst2/train.tsv}
OUT=${2:-runs}
HERE=$(cd "$(dirname "$0")" && pwd)
common=(--label-map "0=negative,1=positive")
spulctl split "$TSV" -o "$OUT/g-small" --entities "bruce willis,sandra bullock,kevin kline" "${common[@]}"
spulctl split "$TSV" -o "$OUT/g-top10" "${common[@]}" \
    --entities "spielberg,williams,lawrence,martha,steven soderbergh,jackie chan,dickens,taylor,hoffman,jackson"
spulctl split "$TSV" -o "$OUT/g-large" --entities "$(paste -sd, "$HERE/splits/g-large-people.txt")" "${common[@]}"
