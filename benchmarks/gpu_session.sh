#!/usr/bin/env bash
# One GPU lease, several calls: every measurement that needs a CUDA GPU, in stages.
#
#   bash benchmarks/gpu_session.sh setup      # install spulctl (no deps) into the machine's python3, gather model parts
#   bash benchmarks/gpu_session.sh kernels    # compiled-kernel tests + bench_kernels.py (bf16)
#   bash benchmarks/gpu_session.sh model      # assemble the familiarized model from its parts (fp16 copy)
#   bash benchmarks/gpu_session.sh sweep NAME:ARGS...  # SPUL runs on SST-2 in parallel, fp32, + the fam baseline
#                                                      # (RETAIN_LIMIT, default 3000: train_retain has 46k records)
#   bash benchmarks/gpu_session.sh step       # bench_unlearn.py on CUDA (reference vs ours vs ours-triton)
#
# The familiarized SmolLM2 travels as fp16 safetensors parts under .xfer/p1..p5 (each call's upload is capped);
# the data (../shared/data/sst2-spul) travels with the first part. Results go to $OUT.
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

kernels() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
    $PY -c "import torch, triton, transformers, onnxruntime as o; print(torch.__version__, triton.__version__, \
transformers.__version__, o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
    TRITON_INTERPRET=0 $PY -m pytest -q tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/kernel_tests.txt"
    $PY benchmarks/bench_kernels.py --dtype bf16 --out "$OUT/kernels_h100_bf16.json" | tail -20
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

sweep() {  # each argument: NAME:extra unlearn args (space separated)
    local splits=$FAM/sst2-spul pids=()
    mkdir -p /tmp/sweep "$OUT/sweep"
    if [ ! -f /tmp/sweep/fam.json ]; then
        $PY -m spulctl eval --model $FAM --splits $splits -o /tmp/sweep/fam-report --limit 1000 --dtype float32 \
            >/tmp/sweep/fam.log 2>&1 && cp /tmp/sweep/fam-report/report.json /tmp/sweep/fam.json &
        pids+=($!)
    fi
    for spec in "$@"; do
        local name=${spec%%:*} extra=${spec#*:}
        # shellcheck disable=SC2086
        timeout "${SWEEP_TIMEOUT:-480}" $PY -m spulctl unlearn --model $FAM --splits $splits -o /tmp/sweep/$name \
            --dtype float32 --epochs "${EPOCHS:-10}" --retain-limit "${RETAIN_LIMIT:-3000}" --no-report-before \
            --checkpoint-every 200 $extra >/tmp/sweep/$name.log 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    $PY - "$@" <<'EOF'
import json, sys
from pathlib import Path
root = Path("/tmp/sweep")
fam = json.loads((root / "fam.json").read_text())["results"] if (root / "fam.json").exists() else {}
print("fam", {k: round(v["accuracy"], 1) for k, v in next(iter(fam.values()), {}).items()} if fam else "-")
for spec in sys.argv[1:]:
    name = spec.split(":")[0]
    b = root / name / "bundle.json"
    if not b.exists():
        tail = (root / f"{name}.log").read_text()[-300:] if (root / f"{name}.log").exists() else ""
        print(f"{name:14s} not finished: {tail!r}")
        continue
    meta = json.loads(b.read_text())
    after = meta["metrics"]["after"]
    print(f"{name:14s} retain {after['test_retain']['accuracy']:5.1f}  forget {after['test_forget']['accuracy']:5.1f}  "
          f"train_s {meta['training'].get('seconds', '?')}")
EOF
    tar -czf "$OUT/sweep.tar.gz" -C /tmp/sweep --exclude='*.ckpt' --exclude='reference.safetensors' . 2>/dev/null || true
}

step() {
    local splits=$FAM/sst2-spul
    $PY benchmarks/bench_unlearn.py --device cuda --model $FAM --data $splits --forget 400 --retain 800 \
        --batch-size 32 --steps 30 --warmup 5 --rounds 2 --threads 4 --out "$OUT/unlearn_h100.json" | tail -40
}

stage=$1
shift
"$stage" "$@"
