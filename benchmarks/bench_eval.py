"""Evaluation throughput: spulctl's scorer vs naive full-logits loops, same model, sentences and machine.

Configurations (all predict the top-1 next token over the whole vocabulary at the answer position):

* ``ours``          — :func:`spulctl.evaluate.metrics.predict`: length-bucketed batches, answer-only head
  (hidden rows at the answer position only go through the (V, d) output head), inference mode;
* ``naive-batched`` — batches in file order padded to their longest text, ``model(...).logits`` for every
  position (b, t, V) in fp32, argmax at the answer position;
* ``naive-single``  — one text at a time: tokenizer call, ``model(...).logits``, argmax of the last position (the
  loop most evaluation scripts start from);
* ``ours-onnx``     — ``spulctl eval --backend onnx``: the subject exported to ONNX Runtime once (KV prefix baked
  in, checked against torch; that one-off time is reported as ``onnx_export_s``), then length-sorted batches
  through the graph with IOBinding (``--no-onnx`` leaves it out).

With ``--bundle`` every configuration runs with the soft prompt (ours: shared KV prefix; naive: the prompt
concatenated to the input embeddings). Configurations alternate in rounds; reports examples/s (median over rounds)
(round 1 includes warm-up; the median discounts it) and how often the naive loops' predictions agree with ours.

Usage:
    python benchmarks/bench_eval.py --model runs/fam-sst2 --data ../shared/data/sst2-spul/test_retain.csv \
        --n 256 --rounds 3 --out benchmarks/results/eval_cpu.json
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
    ap.add_argument("--data", required=True)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--n", type=int, default=256, help="sentences per configuration and round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime configuration")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from spulctl.bundle import load_bundle
    from spulctl.data.readers import read_records
    from spulctl.data.task import TaskSpec, encode, label_vocab
    from spulctl.evaluate.metrics import predict
    from spulctl.models import load_model
    from spulctl.step import body_and_head, collate, prompted_logits

    model, tok = load_model(args.model, device="cpu", dtype="float32")
    bundle = load_bundle(args.bundle) if args.bundle else None
    task = bundle.task() if bundle else TaskSpec()
    prompt = bundle.prompt if bundle else None
    vocab = label_vocab(task, tok)
    rows = read_records(args.data)[: args.n]
    examples = encode(rows, task, tok, vocab)
    body, _ = body_and_head(model)
    embed = body.get_input_embeddings()

    def ours() -> list[int]:
        scorer = None if prompt is None else (lambda m, b: prompted_logits(m, b, prompt))
        pred = predict(model, examples, vocab, tok.pad_token_id, args.batch_size, logits_fn=scorer)
        return pred.full.tolist()

    def full_logits(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if prompt is None:
            return model(input_ids=input_ids, attention_mask=mask).logits.float()  # (b, t, V)
        b, p = input_ids.shape[0], prompt.shape[0]
        embeds = torch.cat([prompt.unsqueeze(0).expand(b, -1, -1), embed(input_ids)], dim=1)
        mask = torch.cat([mask.new_ones(b, p), mask], dim=1)
        return model(inputs_embeds=embeds, attention_mask=mask).logits[:, p:].float()  # (b, t, V)

    first = vocab.first_label_ids

    def label_of(token: int) -> int:
        return first.index(token) if token in first else -1

    def naive_batched() -> list[int]:
        out = []
        with torch.inference_mode():
            for s in range(0, len(examples), args.batch_size):
                batch = collate(examples[s:s + args.batch_size], tok.pad_token_id)
                logits = full_logits(batch.input_ids, batch.attention_mask)
                top = logits[torch.arange(logits.shape[0]), batch.positions[:, 0]].argmax(-1)
                out += [label_of(int(t)) for t in top]
        return out

    def naive_single() -> list[int]:
        out = []
        with torch.inference_mode():
            for r in rows:
                enc = tok(task.prompt(r["text"]), add_special_tokens=False, return_tensors="pt")
                logits = full_logits(enc["input_ids"], enc["attention_mask"])
                out.append(label_of(int(logits[0, -1].argmax())))
        return out

    configs = {"ours": ours, "naive-batched": naive_batched, "naive-single": naive_single}
    export_s = None
    if not args.no_onnx:
        from spulctl.evaluate.onnx_backend import OnnxSubject

        t0 = time.perf_counter()
        onnx = OnnxSubject(args.model, Path(args.bundle) if args.bundle else None, args.batch_size,
                           lambda _e: None, threads=torch.get_num_threads()).__enter__()  # same threads as torch
        export_s = time.perf_counter() - t0
        print(f"onnx export + check: {export_s:.1f} s", flush=True)
        configs["ours-onnx"] = lambda: onnx.predictions(rows).full.tolist()
    times: dict[str, list[float]] = {k: [] for k in configs}
    preds: dict[str, list[int]] = {}
    for rnd in range(args.rounds):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            preds.setdefault(name, got)
            print(f"round {rnd + 1} {name}: {len(rows) / times[name][-1]:.1f} examples/s", flush=True)
    # label index per example, -1 (metrics.OTHER) for an answer that is no label word
    agree = {k: sum(a == b for a, b in zip(preds["ours"], v, strict=True)) / len(rows) for k, v in preds.items()}
    summary = {name: {"median_s": statistics.median(t), "examples_per_s": len(rows) / statistics.median(t)}
               for name, t in times.items()}
    for name in ("naive-batched", "naive-single"):
        summary[f"speedup_vs_{name}"] = summary[name]["median_s"] / summary["ours"]["median_s"]
        if "ours-onnx" in summary:
            summary[f"onnx_speedup_vs_{name}"] = summary[name]["median_s"] / summary["ours-onnx"]["median_s"]
    summary["onnx_export_s"] = export_s
    summary["prediction_agreement_with_ours"] = agree
    finish(args.out, summary, threads=torch.get_num_threads(), n=len(rows), batch_size=args.batch_size,
           bundle=args.bundle)


if __name__ == "__main__":
    main()
