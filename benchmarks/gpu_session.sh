#!/usr/bin/env bash
# One GPU lease, several calls: every measurement that needs a CUDA GPU, in stages (several per call:
# `bash benchmarks/gpu_session.sh setup graphs`).
#
#   setup     install spulctl (no deps) into the machine's python3; gather the model parts this call carried
#   graphs    GPU facts + tests/test_cuda_graphs.py (captured graphs vs the eager step, torch and Triton losses)
#   kernels   compiled-kernel tests (tests/test_kernels.py with TRITON_INTERPRET=0)
#   kbench    bench_kernels.py, bf16, the three heads (SmolLM2, Llama-2, Llama-3)
#   model     assemble the familiarized model from its parts (fp16 copy)
#   step      bench_unlearn.py on CUDA: reference vs ours (CUDA graphs) vs eager vs Triton
#   spul      end-to-end `spulctl unlearn` runs of the SST-2 recipe (timing, then a seed sweep in parallel)
#   scale     a Llama-2-7B-shaped random-weight base (LAYERS=8 of 32; docs/scaling.md): bench_unlearn.py bf16
#             (ours vs reference, samples/s, max_memory_allocated), SPUL runs bf16 and --load-in-4bit, spulctl plan
#
# The familiarized SmolLM2 travels as fp16 safetensors parts under .xfer/p1..p5 (each call's upload is capped,
# so one part per call; the machine keeps them while it stays warm); the data (../shared/data/sst2-spul) travels
# with the last part. Results go to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FAM=/tmp/fam
PY=python3
mkdir -p "$OUT" "$FAM"

setup() {
    if ! $PY -c "import spulctl.kernels" 2>/dev/null; then
        $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { tail -5 "$OUT/pip.log"; exit 1; }
    fi
    for d in .xfer/p*; do [ -d "$d" ] && cp -r "$d"/. "$FAM"/; done
    ls "$FAM"
}

gpu_facts() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/gpu.txt"
    $PY -c "import torch, triton, transformers, onnxruntime as o; print(torch.__version__, triton.__version__, \
transformers.__version__, o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
}

graphs() {
    gpu_facts
    TRITON_INTERPRET=0 timeout 240 $PY -m pytest -q tests/test_cuda_graphs.py -p no:cacheprovider 2>&1 \
        | tail -40 | tee "$OUT/graph_tests.txt"
}

kernels() {
    TRITON_INTERPRET=0 timeout 420 $PY -m pytest -q tests/test_kernels.py -p no:cacheprovider --durations 5 2>&1 \
        | tail -30 | tee "$OUT/kernel_tests.txt"
}

kbench() {
    timeout 400 $PY benchmarks/bench_kernels.py --dtype bf16 --heads 49152x576,32000x4096,128256x4096 \
        --impls triton,eager --reps 20 --out "$OUT/kernels_h100_bf16_s5.json" | tail -30
}

model() {
    $PY - <<'EOF'
from pathlib import Path
from safetensors.torch import load_file, save_file
fam = Path("/tmp/fam")
parts = sorted(fam.glob("part*.safetensors"))
assert len(parts) == 5, parts
sd = {}
for p in parts:
    sd.update(load_file(str(p)))
save_file(sd, str(fam / "model.safetensors"), metadata={"format": "pt"})
for p in parts:
    p.unlink()
print(len(sd), "tensors")
EOF
}

step() {
    local splits=$FAM/sst2-spul
    timeout 560 $PY benchmarks/bench_unlearn.py --device cuda --model $FAM --data $splits --forget 400 --retain 800 \
        --batch-size 32 --steps 30 --warmup 5 --rounds 2 --threads 4 --configs reference,ours,ours-no-cuda-graphs,ours-triton \
        --out "$OUT/unlearn_h100_s5.json" 2>&1 | tail -40
}

unlearn_run() {  # NAME ARGS...: one SST-2 SPUL run (the CPU recipe: 6,000 retain records, 2 epochs, lr 1e-2)
    local name=$1 t0=$SECONDS
    shift
    $PY -m spulctl unlearn --model $FAM --splits $FAM/sst2-spul -o /tmp/spul/$name \
        --prompt-encoder none --lr 1e-2 --epochs 2 --alpha 1 --beta 1 --no-report-before --checkpoint-every 100 "$@" \
        >/tmp/spul/$name.log 2>&1
    echo "$name: exit $?, wall $((SECONDS - t0)) s" | tee -a /tmp/spul/walls.txt
}

spul() {
    mkdir -p /tmp/spul
    # alone: end-to-end time with the defaults on CUDA (graphs, fused kernels), fp32 as the CPU runs
    unlearn_run r6k-fp32 --retain-limit 6000 --dtype float32
    unlearn_run r6k-fp32-eager --retain-limit 6000 --dtype float32 --no-cuda-graphs --max-steps 200
    # together: the recipe's spread over seeds, bf16, and more retain records
    local pids=()
    for seed in 1 2 3; do unlearn_run r6k-fp32-s$seed --retain-limit 6000 --dtype float32 --seed $seed & pids+=($!); done
    unlearn_run r6k-bf16 --retain-limit 6000 --dtype bfloat16 & pids+=($!)
    unlearn_run r12k-fp32 --retain-limit 12000 --dtype float32 & pids+=($!)
    for p in "${pids[@]}"; do wait "$p" || true; done
    $PY - <<'PYEOF'
import json
from pathlib import Path
for d in sorted(Path("/tmp/spul").iterdir()):
    b = d / "bundle.json"
    if not d.is_dir():
        continue
    if not b.exists():
        print(f"{d.name:18s} no bundle: {(d.parent / (d.name + '.log')).read_text()[-400:]!r}")
        continue
    m = json.loads(b.read_text())
    after, tr = m["metrics"]["after"], m["training"]
    print(f"{d.name:18s} retain {after['test_retain']['accuracy']:5.1f}  forget {after['test_forget']['accuracy']:5.1f}  "
          f"train {tr.get('seconds', 0):6.1f} s  {tr.get('samples_per_s', 0):7.1f} samples/s")
PYEOF
    tar -czf "$OUT/spul.tar.gz" -C /tmp/spul --exclude='*.safetensors.tmp' --exclude='reference.safetensors' \
        --exclude='checkpoint-*' . 2>/dev/null || true
}

scale() {  # needs setup + model (the SST-2 splits and SmolLM2's tokenizer under $FAM)
    local shaped=/tmp/shaped7b layers=${LAYERS:-8}
    [ -f $shaped/config.json ] || $PY benchmarks/make_shaped_model.py --config llama-2-7b --layers "$layers" \
        --tokenizer $FAM -o $shaped | tee "$OUT/scale_shape.json"
    timeout 400 $PY benchmarks/bench_unlearn.py --device cuda --model $shaped --data $FAM/sst2-spul --forget 200 \
        --retain 400 --batch-size 16 --steps 10 --warmup 3 --rounds 1 --configs reference,ours \
        --out "$OUT/scale_bench_bf16.json" 2>&1 | tail -20
    for q in bf16 4bit; do
        local flag=""; [ $q = 4bit ] && flag="--load-in-4bit"
        /usr/bin/time -v $PY -m spulctl unlearn --model $shaped --splits $FAM/sst2-spul -o /tmp/scale-$q $flag \
            --dtype bfloat16 --batch-size 16 --max-steps 20 --eval-limit 0 --no-report-before --no-select \
            --retain-limit 1000 --overwrite >"$OUT/scale_$q.log" 2>&1 || tail -5 "$OUT/scale_$q.log"
        cp /tmp/scale-$q/bundle.json "$OUT/scale_$q.bundle.json" 2>/dev/null || true
        $PY -m spulctl plan --model $shaped/config.json --batch-size 16 --max-length 128 --dtype bfloat16 $flag \
            --json >"$OUT/scale_plan_$q.json"
    done
}

for stage in "$@"; do
    "$stage"
done
