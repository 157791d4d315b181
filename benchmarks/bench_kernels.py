"""Benchmark the fused answer-head loss (Triton) vs torch eager (materialised logits) vs torch.compile.

Needs a CUDA GPU (the Triton kernel does not run compiled on the CPU). For each (V, d) head and each M it
reports the median time of forward+backward, peak memory, and the fraction of the bandwidth floor reached:
floor = bytes of W read (2 passes × V·d·itemsize for the kernel, as it reads W twice) ÷ measured device
bandwidth (a large device-to-device copy).

Usage (GPU session):
    python benchmarks/bench_kernels.py --dtype bf16 --out benchmarks/results/kernels_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

HEADS = [(49152, 576), (32000, 4096), (128256, 4096)]
MS = [32, 128, 512, 1024, 4096]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--heads", default=",".join(f"{v}x{d}" for v, d in HEADS), help="VxD,... (output heads)")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="answer rows M, comma-separated")
    ap.add_argument("--impls", default="triton,eager,compile", help="from triton, eager, compile")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    heads = [tuple(int(x) for x in h.split("x")) for h in args.heads.split(",")]
    ms, impls = [int(m) for m in args.ms.split(",")], args.impls.split(",")
    import torch
    import triton.testing
    from spulctl.kernels.answer_head_loss import answer_head_loss, answer_head_loss_reference

    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA GPU; on the CPU the kernels run only under TRITON_INTERPRET=1")
    dev, dtype = "cuda", {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    bandwidth = _bandwidth(torch, triton, dev)
    compiled = torch.compile(answer_head_loss_reference)
    rows = []
    for v, d in heads:
        w = torch.randn(v, d, device=dev, dtype=dtype) / d**0.5
        for m in ms:
            h = torch.randn(m, d, device=dev, dtype=dtype, requires_grad=True)
            h_ref = torch.randn(max(1, m // 2), d, device=dev, dtype=dtype)
            targets = torch.randint(0, v, (m,), device=dev)
            ref_idx = torch.where(torch.arange(m, device=dev) % 3 == 0, -1, torch.arange(m, device=dev) % (m // 2 or 1))
            w_ce = torch.full((m,), 1.0 / m, device=dev)
            w_kl = torch.where(ref_idx >= 0, 1.0 / m, 0.0)
            row = {"V": v, "d": d, "M": m}
            inputs = (h, h_ref, w, targets, w_ce, ref_idx, w_kl)
            for name, fn in (("triton", answer_head_loss), ("eager", answer_head_loss_reference),
                             ("compile", compiled)):
                if name in impls:
                    row[name] = _time(torch, triton, fn, inputs, args.reps)
            floor_ms = 2 * v * d * w.element_size() / bandwidth * 1e3
            row["floor_ms"] = floor_ms
            if row.get("triton", {}).get("ms"):
                row["triton"]["fraction_of_floor"] = floor_ms / row["triton"]["ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(), "dtype": args.dtype,
              "bandwidth_GBps": bandwidth / 1e9, "machine": platform.platform(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def _bandwidth(torch, triton, dev: str) -> float:
    """Device bandwidth in bytes/s from a large device-to-device copy (read + write)."""
    big = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)
    ms = triton.testing.do_bench(big.clone, rep=200)
    return 2 * big.numel() / (ms / 1e3)


def _time(torch, triton, fn, inputs: tuple, reps: int) -> dict:
    """Median ms of forward + backward and peak memory for one implementation."""
    h = inputs[0]

    def step() -> None:
        h.grad = None
        fn(*inputs, "forward")[0].backward()

    try:
        torch.cuda.reset_peak_memory_stats()
        t = triton.testing.do_bench(step, rep=reps * 10)
        return {"ms": t, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    except torch.OutOfMemoryError:
        return {"ms": None, "peak_mb": None, "error": "out of memory"}


if __name__ == "__main__":
    main()
