"""Benchmark: spulctl's SPUL step vs a reference implementation of the released pipeline.

The reference, written here after the SPUL release's recipe: a PEFT P-tuning model (``PromptEncoder``, MLP
hidden 128), full-sequence logits from ``model(...)``, CE over the shifted label mask, and reference logits for
the KL term fetched per sample from a cache of full-vocabulary logits built by a full forward beforehand.

Ours: the same P-tuning MLP, with each fast-step switch on (``all``) or one turned off at a time; ``ours-micro16``
runs each step in slices of 16 examples (`TrainConfig.micro_batch`, gradients added up: the same step, less memory).
``ours-bf16`` (opt-in via ``--configs``) is "ours" with the frozen model in bf16, for CPUs with bf16 matrix units.
On CUDA "ours" replays the step from CUDA graphs (``spulctl.cuda_graphs``), recorded for every batch shape of the
run before timing (their recording time is in ``prep_s``); ``ours-no-cuda-graphs`` runs it eagerly.

Every configuration runs in its own subprocess (so peak RSS is its own), configurations alternate in rounds,
and each reports samples/s over ``--steps`` timed steps after ``--warmup`` steps, and peak memory: the process's
peak RSS on the CPU, ``torch.cuda.max_memory_allocated`` with ``--device cuda`` (where ``--dtype`` picks the
weights' precision, bf16 by default as ``spulctl unlearn`` uses on CUDA).

Usage:
    python benchmarks/bench_unlearn.py --model runs/fam-sst2 --data ../shared/data/sst2-spul \
        --batch-size 16 --steps 6 --rounds 2 --out benchmarks/results/unlearn_cpu.json
    python benchmarks/bench_unlearn.py --device cuda --model fam/ --data splits/ --forget 400 --retain 800 \
        --batch-size 32 --steps 30 --warmup 5 --rounds 3 --out benchmarks/results/unlearn_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _report import finish

CONFIGS = ("reference", "ours", "ours-no-answer-only", "ours-no-shared-prefix", "ours-no-cached-reference",
           "ours-no-lean-mlp", "ours-no-grouped-attention", "ours-micro16")
# opt-in (--configs): the default step with the frozen model in bf16 (the CPU's fp32 default beside it: "ours")
OPT_IN = ("ours-bf16",)
# CUDA only: the eager step, and the fused answer-head loss + prompt_prepend kernels (--kernels triton)
GPU_CONFIGS = ("ours-no-cuda-graphs", "ours-triton")


def _peak_mb(device: str) -> float:
    """Peak memory so far: the process's max RSS on the CPU, the CUDA caching allocator's peak on a GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _examples(model_spec: str, data: str, n_forget: int, n_retain: int, device: str = "cpu", dtype: str = "auto"):
    import random

    from spulctl.data.readers import find_split_file, read_records
    from spulctl.data.task import TaskSpec, encode, label_vocab
    from spulctl.models import load_model

    model, tok = load_model(model_spec, device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    task = TaskSpec()
    vocab = label_vocab(task, tok)
    forget = read_records(find_split_file(data, "train_forget"))[:n_forget]
    retain = random.Random(0).sample(read_records(find_split_file(data, "train_retain")), n_retain)
    rng = random.Random(0)
    targets = [rng.choice(vocab.generic_ids) for _ in forget]
    examples = encode(forget, task, tok, vocab, targets=targets) + encode(retain, task, tok, vocab)
    return model, tok, examples, len(forget)


def run_ours(args, switches: dict, kernels: str = "torch", micro_batch: int = 0) -> dict:
    import torch

    from spulctl.cuda_graphs import GraphedPromptLoss, graphs_apply
    from spulctl.loss import LossWeights
    from spulctl.methods.base import AnswerObjective, reference_hidden
    from spulctl.prompt import init_vectors, soft_prompt
    from spulctl.step import StepOptions, body_and_head, bucketed_batches, prompted_hidden, prompted_logits
    from spulctl.train import forward_backward, micro_slices

    model, tok, examples, n_f = _examples(args.model, args.data, args.forget, args.retain, args.device, args.dtype)
    base_rss = _peak_mb(args.device)
    opts = StepOptions(**switches, prepend_kernel=kernels == "triton")
    prompt = soft_prompt(init_vectors(model, tok, args.p, "vocab", 0), "mlp").to(args.device)
    head = body_and_head(model)[1]
    t0 = time.perf_counter()
    ref = None
    if opts.cached_reference:
        import tempfile

        ref = reference_hidden(model, examples[n_f:], tok.pad_token_id,
                               Path(tempfile.mkdtemp()) / "ref.safetensors", "bench", 32, lambda _e: None)
    graphed = None
    if graphs_apply(opts, args.device, ref is not None):
        graphed = GraphedPromptLoss(model, prompt, head, examples, n_f, ref, LossWeights(), opts, tok.pad_token_id,
                                    kernels)
        batches = bucketed_batches([len(e.input_ids) for e in examples], args.batch_size, seed=0)
        graphed.prepare([part for b in batches[:args.warmup + args.steps] for part in micro_slices(b, micro_batch)])
        _sync(args.device)
    prep = time.perf_counter() - t0
    obj = AnswerObjective(examples, n_f, list(prompt.named_parameters()),
                          lambda b: prompted_logits(model, b, prompt(), opts), ref,
                          lambda b: prompted_logits(model, b, None, opts), head, LossWeights(), tok.pad_token_id,
                          args.device, hidden_fn=lambda b: prompted_hidden(model, b, prompt(), opts),
                          ref_hidden_fn=lambda b: prompted_hidden(model, b, None, opts), kernels=kernels,
                          graphed=graphed)
    opt = torch.optim.AdamW(prompt.parameters(), lr=1e-4)
    return _time_steps(args, obj.lengths(), lambda idx: forward_backward(obj, idx, micro_batch), opt, base_rss, prep)


def run_reference(args) -> dict:
    import torch
    import torch.nn.functional as F
    from peft import PromptEncoderConfig, get_peft_model

    from spulctl.step import collate

    model, tok, examples, n_f = _examples(args.model, args.data, args.forget, args.retain, args.device, args.dtype)
    dev = args.device
    base_rss = _peak_mb(dev)
    # Reference logits cache: one full forward per retain sample, full-vocabulary logits at the answer position.
    t0 = time.perf_counter()
    cache: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for i in range(n_f, len(examples)):
            b = collate([examples[i]], tok.pad_token_id).to(dev)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits  # (1, t, V)
            cache[i] = logits[0, examples[i].answer_pos].float().clone()
    _sync(dev)
    prep = time.perf_counter() - t0
    peft_model = get_peft_model(model, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.p,
                                                           encoder_hidden_size=128)).to(dev)
    p = args.p

    def loss_fn(idx):
        batch = collate([examples[i] for i in idx], tok.pad_token_id, idx).to(dev)
        labels = torch.full_like(batch.input_ids, -100)
        for r, i in enumerate(idx):
            e = examples[i]
            labels[r, e.answer_pos + 1: e.answer_pos + 1 + len(e.target_ids)] = torch.tensor(e.target_ids, device=dev)
        out = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = out.logits[:, p:]  # (b, t, V) full-sequence logits, virtual tokens dropped
        shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
        per_tok = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
        per_row = per_tok.sum(1) / (shift_labels != -100).sum(1)
        is_f = torch.tensor([i < n_f for i in idx], device=dev)
        l_f = per_row[is_f].mean() if is_f.any() else per_row.new_zeros(())
        l_r = per_row[~is_f].mean() if (~is_f).any() else per_row.new_zeros(())
        l_kl = per_row.new_zeros(())
        if (~is_f).any():
            rows = [r for r, i in enumerate(idx) if i >= n_f]
            q = torch.stack([logits[r, examples[idx[r]].answer_pos] for r in rows]).float().log_softmax(-1)
            ref = torch.stack([cache[idx[r]] for r in rows]).log_softmax(-1)  # fetched per sample
            l_kl = (ref.exp() * (ref - q)).sum(-1).mean()
        loss = l_f + l_r + l_kl
        loss.backward()
        return loss

    params = [q for q in peft_model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    return _time_steps(args, [len(e.input_ids) for e in examples], loss_fn, opt, base_rss, prep)


def _time_steps(args, lengths, step_fn, opt, base_rss: float, prep: float) -> dict:
    """Time ``step_fn`` (forward + backward of one batch) with an AdamW step after each."""
    import torch

    from spulctl.step import bucketed_batches

    torch.manual_seed(0)
    batches = bucketed_batches(lengths, args.batch_size, seed=0)
    seen, t = 0, 0.0
    for s in range(args.warmup + args.steps):
        if s == args.warmup:
            _sync(args.device)
            t = time.perf_counter()
        opt.zero_grad()
        step_fn(batches[s])
        opt.step()
        if s >= args.warmup:
            seen += len(batches[s])
    _sync(args.device)
    dt = time.perf_counter() - t
    peak = _peak_mb(args.device)
    return {"samples_per_s": seen / dt, "step_s": dt / args.steps, "peak_rss_mb": peak,
            "peak_above_model_mb": peak - base_rss, "prep_s": prep}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    name = args.child
    if name == "ours-bf16":  # "ours" with the frozen model in bf16 (the prompt still trains in fp32)
        args.dtype, name = "bfloat16", "ours"
    if name == "reference":
        res = run_reference(args)
    elif name == "ours-micro16":  # the whole step in slices of 16 examples, gradients added up
        res = run_ours(args, {}, micro_batch=16)
    elif name == "ours-triton":
        res = run_ours(args, {"answer_only": True, "shared_prefix": True, "cached_reference": True}, "triton")
    else:
        off = name.removeprefix("ours").removeprefix("-no-").replace("-", "_")
        switches = {"answer_only": True, "shared_prefix": True, "cached_reference": True, "lean_mlp": True,
                    "grouped_attention": True}
        if off:
            switches[off] = False
        res = run_ours(args, switches)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="splits dir with train_forget/train_retain")
    ap.add_argument("--forget", type=int, default=200)
    ap.add_argument("--retain", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("-p", type=int, default=30)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    names = ", ".join(CONFIGS + OPT_IN + GPU_CONFIGS)
    ap.add_argument("--configs", default=None, help=f"comma-separated, from {names} (default: all that run on "
                    "--device but the opt-in ones)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.configs is None:
        on_gpu = args.device.startswith("cuda")
        # grouped attention is a CPU-only switch: on a GPU "ours-no-grouped-attention" would repeat "ours"
        args.configs = ",".join([c for c in CONFIGS if not (on_gpu and c == "ours-no-grouped-attention")]
                                + list(GPU_CONFIGS if on_gpu else ()))
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for name in args.configs.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{name} failed")
            res = json.loads(line[7:])
            results.setdefault(name, []).append(res)
            print(f"round {rnd + 1} {name:28s} {res['samples_per_s']:7.2f} samples/s  "
                  f"peak {res['peak_rss_mb']:7.0f} MB (+{res['peak_above_model_mb']:.0f} above model)", flush=True)
    summary = {}
    for name, runs in results.items():
        best = max(r["samples_per_s"] for r in runs)
        summary[name] = {"samples_per_s_best": best, "samples_per_s_mean": sum(r["samples_per_s"] for r in runs)
                         / len(runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "peak_above_model_mb": max(r["peak_above_model_mb"] for r in runs),
                         "prep_s": runs[0]["prep_s"]}
    if "reference" in summary and "ours" in summary:
        ref, ours = summary["reference"], summary["ours"]
        summary["speedup"] = ours["samples_per_s_mean"] / ref["samples_per_s_mean"]
        summary["memory_ratio_total"] = ours["peak_rss_mb"] / ref["peak_rss_mb"]
        summary["memory_ratio_above_model"] = ours["peak_above_model_mb"] / ref["peak_above_model_mb"]
    memory = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    if args.device.startswith("cuda"):
        import torch

        summary["device_name"] = torch.cuda.get_device_name()
    finish(args.out, summary, memory=memory, threads=args.threads, settings=vars(args) | {"out": str(args.out)},
           runs=results)


if __name__ == "__main__":
    main()
