"""Inference benchmark: compiled prefix on ONNX Runtime vs the prompt as p extra tokens vs the unprompted model.

Configurations, on the same SST-2 test sentences, CPU, alternating in rounds:

* ``ort-prefix``   — ONNX Runtime, bundle compiled into a KV prefix baked into the graph (``spulctl export``),
* ``ort-prefix-inputs`` — the same prefix as graph inputs, bound once (``spulctl export --prefix inputs``),
* ``ort-none``     — ONNX Runtime, unprompted model (``spulctl export --no-bundle``),
* ``torch-tokens`` — torch, the prompt as p extra input embeddings through every layer (no prefix compilation),
* ``torch-prefix`` — torch, shared KV prefix (spulctl's training/eval path).

Texts are sorted by length first (as ``spulctl predict`` does), so batches carry little padding. ORT runs go
through the predictor's IOBinding path. Reports the median latency per batch and throughput (texts/s) at each
batch size.

Usage:
    python benchmarks/bench_inference.py --model runs/fam-sst2 --bundle runs/spul-sst2 \
        --data ../shared/data/sst2-spul/test_retain.csv --work runs/bench-inference \
        --batch-sizes 1,32 --rounds 3 --out benchmarks/results/inference_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _report import finish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--n", type=int, default=128, help="sentences per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from spulctl.bundle import load_bundle
    from spulctl.data.readers import read_records
    from spulctl.data.task import encode, label_vocab
    from spulctl.export.runtime import OnnxPredictor
    from spulctl.models import load_model
    from spulctl.pipeline import run_export
    from spulctl.step import StepOptions, collate, prompted_logits

    texts = sorted((r["text"] for r in read_records(args.data)[: args.n]), key=len)
    for name, kw in (("onnx-prefix", {"bundle": Path(args.bundle)}),
                     ("onnx-prefix-inputs", {"bundle": Path(args.bundle), "prefix_mode": "inputs"}),
                     ("onnx-none", {"no_bundle": True})):
        if not (args.work / name / "manifest.json").is_file():
            run_export(args.model, args.work / name, overwrite=True, **kw)
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    bundle = load_bundle(args.bundle)
    task = bundle.task()
    vocab = label_vocab(task, tok)
    examples = encode([{"text": t, "label": task.label_words[0]} for t in texts], task, tok, vocab)

    def torch_runner(opts: StepOptions):
        def run(bs: int) -> list[float]:
            times = []
            with torch.inference_mode():
                for s in range(0, len(examples), bs):
                    batch = collate(examples[s:s + bs], tok.pad_token_id)
                    t0 = time.perf_counter()
                    prompted_logits(model, batch, bundle.prompt, opts)[:, 0].log_softmax(-1)
                    times.append(time.perf_counter() - t0)
            return times
        return run

    def ort_runner(folder: Path):
        pred = OnnxPredictor(folder, provider="cpu", threads=torch.get_num_threads())  # as many threads as torch

        def run(bs: int) -> list[float]:
            times = []
            for s in range(0, len(texts), bs):
                feed = pred.feed(texts[s:s + bs])
                t0 = time.perf_counter()
                pred.run(feed)
                times.append(time.perf_counter() - t0)
            return times
        return run

    runners = {"ort-prefix": ort_runner(args.work / "onnx-prefix"),
               "ort-prefix-inputs": ort_runner(args.work / "onnx-prefix-inputs"),
               "ort-none": ort_runner(args.work / "onnx-none"),
               "torch-tokens": torch_runner(StepOptions(shared_prefix=False)),
               "torch-prefix": torch_runner(StepOptions(shared_prefix=True))}
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    raw: dict[str, dict[int, list[float]]] = {k: {b: [] for b in sizes} for k in runners}
    for bs in sizes:
        for run in runners.values():
            run(bs)  # warm-up
        for rnd in range(args.rounds):
            for name, run in runners.items():
                raw[name][bs] += run(bs)
                print(f"batch {bs} round {rnd + 1} {name}: {statistics.median(raw[name][bs]) * 1000:.1f} ms/batch",
                      flush=True)
    summary = {}
    for name in runners:
        summary[name] = {}
        for bs in sizes:
            med = statistics.median(raw[name][bs])
            summary[name][str(bs)] = {"median_ms_per_batch": med * 1000, "texts_per_s": bs / med}
    for bs in map(str, sizes):
        base = summary["ort-none"][bs]["median_ms_per_batch"]
        summary.setdefault("overhead_vs_unprompted", {})[bs] = {
            k: summary[k][bs]["median_ms_per_batch"] / base - 1 for k in ("ort-prefix", "ort-prefix-inputs")}
        tok_base = summary["torch-prefix"][bs]["median_ms_per_batch"]
        summary["overhead_vs_unprompted"][bs]["torch-tokens_vs_torch-prefix"] = (
            summary["torch-tokens"][bs]["median_ms_per_batch"] / tok_base - 1)
    finish(args.out, summary, threads=torch.get_num_threads(), n_texts=len(texts), p=int(bundle.prompt.shape[0]))


if __name__ == "__main__":
    main()
