"""Self-generation throughput: ``spulctl reveal``'s engine vs a naive loop, same model, target and machine.

Configurations (both keep a text only when it is relevant — on task with restricted confidence >= the threshold,
and on the target in forget mode / off it in retain mode — and neither an exact nor a near duplicate of a kept one):

* ``ours``  — :func:`spulctl.reveal.generate_records`: the instruction pool (one target name per instruction, the
  names taking turns) + model paraphrases, NeuralUCB picking ``arms_per_round`` instructions per round,
  ``samples_per_arm`` samples each in one batch (each prompt prefilled once, rows leaving as they finish their
  sentence), only the on-target texts scored, in one batch;
* ``naive`` — one instruction (the pool's first, naming the whole target), one sample per call run to the end of
  the sequence or ``max_new_tokens``, each text scored on its own, no bandit (the loop a first script would write).

``ours`` runs until N records are kept or the budget is spent; ``naive`` also stops after ``--naive-seconds`` (its
rate is steady, so a capped run measures it). Reports kept records per minute, time to N (null when not reached;
``naive`` adds the time to N its rate projects), generated texts, the acceptance rate and, for ``ours``, why samples
were not kept, where the time went and the kept records per target name.

Usage (SmolLM2 on the CPU, one thread; about 10 min):
    python benchmarks/bench_reveal.py --model smollm2-135m --threads 1 --n 300 --budget 2000 --naive-seconds 240 \
        --entities "steven spielberg,jackie chan,steven soderbergh,robin williams,dustin hoffman,samuel l. jackson" \
        --out benchmarks/results/reveal_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import finish


def naive(model, tok, cfg, max_seconds: float) -> dict:
    """One instruction, one sample at a time, each text scored alone; same keep rules as the engine."""
    import numpy as np

    from spulctl.data.split import entity_pattern
    from spulctl.reveal import generate as gen
    from spulctl.reveal import instructions as ins
    from spulctl.reveal import scoring as sc

    prompt = gen.format_prompt(tok, ins.build_pool(cfg.mode.value, cfg.describe_target(), cfg.entities, cfg.seed)[0])
    names = entity_pattern(cfg.entities) if cfg.entities else None
    anchors = [a for a in [cfg.target, *cfg.examples] if a]
    anchor_vecs = sc.embed(anchors, cfg.embedder) if anchors else None
    kept, seen, kept_vecs, generated = [], set(), None, 0
    start, to_n = time.perf_counter(), None
    while len(kept) < cfg.n and generated < cfg.budget and time.perf_counter() - start < max_seconds:
        raws, ended = gen.sample_rows(model, tok, [prompt], seed=cfg.seed * 100_003 + generated,
                                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        generated += 1
        complete = ended[0] or gen.has_sentence(raws[0]) or not cfg.complete_only
        text = gen.clean(raws[0], cfg.max_sentences) if complete else None
        if not text or gen.normalise(text) in seen:
            continue
        vec = sc.embed([text], cfg.embedder)
        conf = sc.answer(model, tok, cfg.task, [text], 1).confidence
        hit = sc.on_target([text], vec, names, anchor_vecs, cfg.similarity)
        if not sc.relevant(hit, conf, cfg.min_confidence, cfg.mode.value)[0]:
            continue
        if sc.near_duplicate(vec[0], kept_vecs, cfg.dedup_similarity):
            continue
        seen.add(gen.normalise(text))
        kept_vecs = vec if kept_vecs is None else np.vstack([kept_vecs, vec])
        kept.append(text)
        if len(kept) == cfg.n:
            to_n = time.perf_counter() - start
    out = _summary(len(kept), generated, time.perf_counter() - start, to_n, kept[:3])
    rate = out["kept_per_min"]
    return {**out, "projected_time_to_n_s": round(60 * cfg.n / rate, 1) if rate else None}


def ours(model, tok, cfg) -> dict:
    """The engine, timed; time to N is when the N-th record was kept (the loop stops there)."""
    from spulctl.reveal.engine import RevealRun

    start = time.perf_counter()
    run = RevealRun(model, tok, cfg)
    try:
        records = run.run()
    except Exception as exc:  # a target the model never produces: report zero, do not crash the benchmark
        from spulctl.errors import DataError

        if not isinstance(exc, DataError):
            raise
        records = []
    seconds = time.perf_counter() - start
    to_n = seconds if len(records) >= cfg.n else None
    from spulctl.reveal.report import totals

    names = {e: sum(e.lower() in r["text"].lower() for r in records) for e in cfg.entities}
    return {**_summary(len(records), run.generated, seconds, to_n, [r["text"] for r in records[:3]]),
            "rounds": len(run.rounds), "pool": len(run.pool),
            "rejected": totals(r["rejected"] for r in run.rounds),
            "phase_seconds": totals(r["phase_seconds"] for r in run.rounds), "kept_per_name": names}


def _summary(kept: int, generated: int, seconds: float, to_n: float | None, examples: list[str]) -> dict:
    return {"kept": kept, "generated": generated, "seconds": round(seconds, 2),
            "accepted_per_s": round(kept / seconds, 4) if seconds else 0.0,
            "kept_per_min": round(60 * kept / seconds, 2) if seconds else 0.0,
            "time_to_n_s": round(to_n, 2) if to_n is not None else None,
            "acceptance": round(kept / generated, 4) if generated else 0.0, "examples": examples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--entities", default=None, help="target names, comma-separated")
    ap.add_argument("--target", default=None, help="target in free text")
    ap.add_argument("--mode", default="forget", choices=["forget", "retain"])
    ap.add_argument("--n", type=int, default=40, help="records to keep (time to N)")
    ap.add_argument("--budget", type=int, default=800, help="texts to generate at most, per configuration")
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "shingle"])
    ap.add_argument("--min-confidence", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--plain-prompt", action="store_true", help="allow a model without a chat template")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--naive-seconds", type=float, default=300, help="stop the naive loop after this long")
    ap.add_argument("--only", choices=["ours", "naive"], default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from spulctl.models import load_model
    from spulctl.reveal import RevealConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RevealConfig(model=args.model, entities=(args.entities or "").split(","), target=args.target,
                       mode=args.mode, n=args.n, budget=args.budget, embedder=args.embedder, seed=args.seed,
                       min_confidence=args.min_confidence, max_new_tokens=args.max_new_tokens,
                       plain_prompt=args.plain_prompt)
    model, tok = load_model(args.model)
    results = {}
    runs = (("ours", ours), ("naive", lambda m, t, c: naive(m, t, c, args.naive_seconds)))
    for name, fn in runs:
        if args.only in (None, name):
            results[name] = fn(model, tok, cfg)
            print(name, {k: v for k, v in results[name].items() if k != "examples"}, flush=True)
    if "ours" in results and "naive" in results and results["naive"]["accepted_per_s"]:
        results["speedup_accepted_per_s"] = round(results["ours"]["accepted_per_s"]
                                                  / results["naive"]["accepted_per_s"], 2)
    finish(args.out, results, config=cfg.to_dict(), threads=torch.get_num_threads(),
           device=str(next(model.parameters()).device))


if __name__ == "__main__":
    main()
