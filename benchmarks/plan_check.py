"""Check ``spulctl plan --device cpu`` against the measured peak RSS of short SmolLM2 runs (docs/scaling.md).

Each configuration runs ``spulctl unlearn … --max-steps 5`` in its own process, twice: with glibc's default
allocator and with ``MALLOC_MMAP_THRESHOLD_=131072`` (a fixed mmap threshold: freed activation buffers go back to
the system, so the peak RSS is the live memory, the plan's ``total_mib``). The default allocator's peak is compared
with the plan's ``peak_rss_mib`` (live + the heap term); the "fit" rows chose that term's factor, the "check" rows
test it. ``--max-length 40`` is below every demo batch's
longest example, so every step pads to exactly the planned 40 tokens. Writes benchmarks/results/plan_cpu.json.

Usage: python benchmarks/plan_check.py SPLITS_DIR [--only fit|check] [--out benchmarks/results/plan_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# "fit": the runs spulctl.plan.HEAP_RETAINED was chosen on; "check": runs it was tested on afterwards
CONFIGS = [
    {"name": "spul batch 16", "method": "spul", "batch_size": 16, "micro_batch": 0, "role": "fit"},
    {"name": "spul batch 32, micro-batch 8", "method": "spul", "batch_size": 32, "micro_batch": 8, "role": "fit"},
    {"name": "ga (LoRA r=16) batch 16", "method": "ga", "batch_size": 16, "micro_batch": 0, "role": "fit"},
    {"name": "spul batch 8", "method": "spul", "batch_size": 8, "micro_batch": 0, "role": "check"},
    {"name": "spul batch 24, micro-batch 12", "method": "spul", "batch_size": 24, "micro_batch": 12,
     "role": "check"},
    {"name": "ga (LoRA r=16) batch 8", "method": "ga", "batch_size": 8, "micro_batch": 0, "role": "check"},
    {"name": "ga (LoRA r=16) batch 16, micro-batch 4", "method": "ga", "batch_size": 16, "micro_batch": 4,
     "role": "check"},
]
MAX_LENGTH = 40
PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def unlearn_cmd(cfg: dict, splits: Path, out: Path) -> list[str]:
    """The measured run: the training step only (no evaluation, no selection rounds)."""
    return ["spulctl", "unlearn", "--model", "smollm2-135m", "--splits", str(splits), "-o", str(out),
            "--method", cfg["method"], "--batch-size", str(cfg["batch_size"]), "--micro-batch",
            str(cfg["micro_batch"]), "--max-length", str(MAX_LENGTH), "--max-steps", "5", "--eval-limit", "0",
            "--no-report-before", "--no-select", "--overwrite"]


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of ``cmd`` run in a fresh child of a fresh interpreter."""
    exe = str(Path(sys.executable).parent / cmd[0])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, exe, *cmd[1:]], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def planned(cfg: dict, retain: int) -> tuple[dict, list[str]]:
    cmd = ["spulctl", "plan", "--model", "smollm2-135m", "--device", "cpu", "--method", cfg["method"],
           "--batch-size", str(cfg["batch_size"]), "--micro-batch", str(cfg["micro_batch"]), "--max-length",
           str(MAX_LENGTH), "--retain", str(retain), "--json"]
    out = subprocess.run([str(Path(sys.executable).parent / "spulctl"), *cmd[1:]], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out), cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("splits", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "plan_cpu.json")
    ap.add_argument("--only", choices=["fit", "check"], help="run only these configurations")
    args = ap.parse_args()
    if args.only and args.out == ap.get_default("out"):  # a partial run does not replace the full results
        args.out = args.out.with_name(f"plan_cpu.{args.only}.json")
    rows = []
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in [c for c in CONFIGS if args.only in (None, c["role"])]:
            cmd = unlearn_cmd(cfg, args.splits, Path(tmp) / "out")
            default_mib, seconds = measure(cmd, base_env)
            fixed_mib, _ = measure(cmd, {**base_env, "MALLOC_MMAP_THRESHOLD_": "131072"})
            meta = json.loads((Path(tmp) / "out" / ("bundle.json" if cfg["method"] == "spul"
                                                    else "spulctl-manifest.json")).read_text())
            retain = meta.get("data", {}).get("retain_records", 0)
            plan, plan_cmd = planned(cfg, retain)
            live, rss = plan["total_mib"], plan["peak_rss_mib"]
            rows.append({**cfg, "command": " ".join(cmd), "plan_command": " ".join(plan_cmd), "planned_mib":
                         round(live, 1), "planned_peak_rss_mib": round(rss, 1),
                         "peak_rss_mib_fixed_mmap_threshold": round(fixed_mib, 1),
                         "peak_rss_mib_default_allocator": round(default_mib, 1), "seconds": round(seconds, 1),
                         "error_vs_fixed": round(live / fixed_mib - 1, 4),
                         "error_vs_default": round(live / default_mib - 1, 4),
                         "peak_rss_error_vs_default": round(rss / default_mib - 1, 4)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} vCPU, {platform.system()}",
              "python": platform.python_version(), "max_length": MAX_LENGTH, "rows": rows}
    tmp_out = args.out.with_name(f".{args.out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)


if __name__ == "__main__":
    main()
