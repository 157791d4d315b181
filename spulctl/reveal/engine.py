"""The reveal loop: pick instructions, sample, score, keep, learn — until N records are kept or the budget is spent.

Each round the bandit picks ``arms_per_round`` instructions; in forget mode with names each names one target, the
names taking turns. Every instruction is sampled ``samples_per_arm`` times in one batch (prefilled once per
instruction; rows leave as they finish their sentence). Texts that miss the target test are not sent through the
model's answer; the rest are scored in batches. A picked instruction's reward is the harmonic mean of the relevance
and the diversity of its own texts. Each round reports how many samples were dropped, and why (``cut_off``,
``unusable``, ``off_target``, ``off_task``, ``duplicate``, ``near_duplicate``, ``over_n``), and where its time
went. Kept records are streamed to a checkpoint folder beside the output (``.<out>.ckpt/``), so a large budget
holds only the kept texts' embeddings in memory and an interrupted run continues with ``resume``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import DataError
from spulctl.io import write_json_atomic
from spulctl.reveal import generate as gen
from spulctl.reveal import instructions as ins
from spulctl.reveal import scoring as sc
from spulctl.reveal.config import RevealConfig

if TYPE_CHECKING:
    from torch import nn

Emit = Callable[[dict], None]


class NothingRevealedError(DataError):
    """The budget is spent and not one relevant text came out (the run leaves nothing behind).

    Args:
        message: the one-line error (worded with ``spulctl reveal``'s flags).
        target: the target in words (:meth:`RevealConfig.describe_target`).
        generated: texts generated before the budget ran out.
    """

    def __init__(self, message: str, target: str = "", generated: int = 0) -> None:
        super().__init__(message)
        self.target, self.generated = target, generated


class RevealRun:
    """One run's state: the instruction pool, the bandit, the kept records and the per-round report.

    Args:
        checkpoint: folder for ``records.jsonl`` (kept records, appended) and ``state.json`` (after every round);
            None keeps everything in memory (library use).
    """

    def __init__(self, model: nn.Module, tok: Any, cfg: RevealConfig, emit: Emit | None = None,
                 checkpoint: Path | None = None) -> None:
        gen.check_prompting(tok, cfg.plain_prompt, cfg.model)
        self.model, self.tok, self.cfg = model, tok, cfg
        self.emit = emit or (lambda _e: None)
        self.ckpt = checkpoint
        self.mode = cfg.mode.value
        self.records: list[dict] = []
        self.rounds: list[dict] = []
        self.history: list[tuple[int, float]] = []
        self.generated = 0
        self.seen: set[str] = set()
        self.kept_vecs: Any = None  # (k, e) unit embeddings of the kept texts
        self.names = None
        if cfg.entities:
            from spulctl.data.split import entity_pattern

            self.names = entity_pattern(cfg.entities)
        anchors = [a for a in [cfg.target, *cfg.examples] if a]
        self.anchors = sc.embed(anchors, cfg.embedder) if anchors else None
        self.pool: list[str] = []
        # forget mode with names: instructions name one target at a time, the names taking turns
        self.per_name = self.mode == "forget" and bool(cfg.entities)
        self.subjects = cfg.entities if self.per_name else [cfg.describe_target()]
        self.prompts: dict[str, str] = {}  # instruction -> formatted prompt

    # ------------------------------------------------------------ setup
    def _state_path(self) -> Path | None:
        return self.ckpt / "state.json" if self.ckpt else None

    def _setup(self) -> None:
        """Build (or, resuming, reload) the pool, embed it and make the bandit."""
        import torch

        from spulctl.reveal.bandit import make_bandit

        state = self._load_state()
        if state is None:
            self.pool = ins.build_pool(self.mode, self.cfg.describe_target(), self.cfg.entities, self.cfg.seed,
                                       per_name=self.per_name)
            self.pool += self._paraphrases()
        feats = torch.from_numpy(sc.embed([ins.fill_target(i, self.subjects[0]) for i in self.pool],
                                          self.cfg.embedder))  # (K, e)
        self.bandit = make_bandit(self.cfg.bandit.value, feats, self.cfg.lam, self.cfg.nu, self.cfg.seed)
        if self.history:
            self.bandit.restore([a for a, _ in self.history], [r for _, r in self.history])
        if self.ckpt:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            self._save_state()

    def _paraphrases(self) -> list[str]:
        """Ask the model to reword some pool instructions; keep those that still carry the target constraint."""
        if self.cfg.paraphrases < 1:
            return []
        rng = random.Random(self.cfg.seed + 1)
        picked = rng.sample(self.pool, min(self.cfg.paraphrases, len(self.pool)))
        asked = [ins.fill_target(p, self.subjects[i % len(self.subjects)]) for i, p in enumerate(picked)]
        requests = [gen.format_prompt(self.tok, ins.PARAPHRASE_REQUEST.format(instruction=a)) for a in asked]
        raw = gen.sample(self.model, self.tok, requests, seed=self.cfg.seed + 7, max_new_tokens=40,
                         temperature=0.8, top_p=self.cfg.top_p, stop=lambda t: gen.finished(t, 1))
        known = {gen.normalise(p) for p in self.pool}
        out = []
        for text in raw:
            para = ins.clean_paraphrase(text)
            if para and ins.keeps_constraint(para, self.mode, self.cfg.describe_target(), self.names):
                para = self.names.sub(ins.TARGET, para) if self.per_name else para  # back to a template
                if gen.normalise(para) not in known:
                    known.add(gen.normalise(para))
                    out.append(para)
        self.emit({"kind": "note", "message": f"instruction pool: {len(self.pool)} templates + {len(out)} of "
                                              f"{len(picked)} model paraphrases kept"})
        return out

    # ------------------------------------------------------------ checkpoint
    def _load_state(self) -> dict | None:
        from spulctl.distributed import from_rank0

        def read() -> dict | None:  # rank 0 holds the checkpoint; the other ranks get what it read (or its error)
            path = self._state_path()
            if not (self.cfg.resume and path and path.exists()):
                return None
            state = json.loads(path.read_text())
            if state["config"] != self.cfg.to_dict():
                raise DataError(f"--resume: {self.ckpt} was made with other options; drop --resume to start over")
            lines = (self.ckpt / "records.jsonl").read_text().splitlines()[: state["kept"]]  # drop a torn tail
            return {"state": state, "records": [json.loads(ln) for ln in lines]}

        saved = from_rank0(read)
        if saved is None:
            return None
        state, self.records = saved["state"], saved["records"]
        self.pool, self.generated, self.rounds = state["pool"], state["generated"], state["rounds"]
        self.history = [(int(a), float(r)) for a, r in state["history"]]
        self._write_records(self.records, mode="w")
        self.seen = {gen.normalise(r["text"]) for r in self.records}
        if self.records:
            self.kept_vecs = sc.embed([r["text"] for r in self.records], self.cfg.embedder)
        self.emit({"kind": "note", "message": f"resuming: {len(self.records)} kept, {self.generated} generated, "
                                              f"round {len(self.rounds)}"})
        return state

    def _save_state(self) -> None:
        path = self._state_path()
        if path:
            write_json_atomic(path, {"config": self.cfg.to_dict(), "pool": self.pool, "generated": self.generated,
                                     "kept": len(self.records), "history": self.history, "rounds": self.rounds})

    def _write_records(self, records: list[dict], mode: str = "a") -> None:
        if self.ckpt:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            with open(self.ckpt / "records.jsonl", mode, encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    # ------------------------------------------------------------ the loop
    def run(self) -> list[dict]:
        """Generate until ``cfg.n`` records are kept or ``cfg.budget`` texts were generated.

        Raises:
            DataError: the budget is spent and not one relevant text came out.
        """
        self._setup()
        cfg = self.cfg
        self.emit({"kind": "reveal-start", "total": cfg.n, "budget": cfg.budget, "kept": len(self.records),
                   "generated": self.generated})
        while len(self.records) < cfg.n and self.generated < cfg.budget:
            self._round(len(self.rounds) + 1)
        if not self.records:
            raise NothingRevealedError(
                f"reveal: the model produced no relevant text for {self.cfg.describe_target()!r} in {self.generated} "
                "generated texts (budget spent); nothing written — try --target/--examples, a larger --budget or a "
                "lower --min-confidence", target=self.cfg.describe_target(), generated=self.generated)
        if len(self.records) < cfg.n:
            self.emit({"kind": "note", "message": f"budget spent: kept {len(self.records)} of {cfg.n} records"})
        return self.records

    def _round(self, rnd: int) -> None:
        cfg, clock = self.cfg, _Clock()
        left = cfg.budget - self.generated
        # pick: the bandit's instructions, each with the next target name in turn (one prompt per arm)
        arms = self.bandit.select(min(cfg.arms_per_round, math.ceil(left / cfg.samples_per_arm)))
        asked = [ins.fill_target(self.pool[a], self.subjects[(len(self.history) + j) % len(self.subjects)])
                 for j, a in enumerate(arms)]
        owner = [j for j in range(len(arms)) for _ in range(cfg.samples_per_arm)][:left]  # arm slot per sample
        clock.lap("bandit")
        # sample: one batch, each row stopping where clean() would cut it
        raw, ended = self._sample([self._prompt(asked[j]) for j in owner], cfg.seed * 100_003 + rnd)
        self.generated += len(raw)
        clock.lap("generate")
        # a sample cut off by max_new_tokens mid-way through its first sentence is not a text: drop it
        cut = [cfg.complete_only and not end and not gen.has_sentence(r) for r, end in zip(raw, ended, strict=True)]
        cleaned = [None if c else gen.clean(r, cfg.max_sentences) for r, c in zip(raw, cut, strict=True)]
        cut_off = sum(cut)
        usable = [i for i, c in enumerate(cleaned) if c]
        texts = [cleaned[i] for i in usable]
        # score: the target test first; only texts that pass it need the model's answer
        vecs = sc.embed(texts, cfg.embedder)  # (u, e)
        hit = (sc.person_hits(texts, self.names) if sc.is_generative(cfg.task) else
               sc.on_target(texts, vecs, self.names, self.anchors, cfg.similarity))
        clock.lap("embed")
        wanted = hit if self.mode == "forget" else ~hit
        answers = sc.answer_some(self.model, self.tok, cfg.task, texts, wanted, cfg.batch_size)
        rel = sc.relevant(hit, answers.confidence, cfg.min_confidence, self.mode)
        clock.lap("answer")
        slot = [owner[i] for i in usable]
        stats = [self._arm_stats(j, slot, rel, vecs, owner.count(j)) for j in range(len(arms))]
        self.bandit.update(arms, [s["reward"] for s in stats])
        self.history += [(a, s["reward"]) for a, s in zip(arms, stats, strict=True)]
        clock.lap("bandit")
        new, dropped = self._keep(texts, vecs, rel, answers, slot, asked, stats, rnd)
        rejected = {"cut_off": cut_off, "unusable": len(raw) - len(texts) - cut_off, "off_target": int((~wanted).sum()),
                    "off_task": int((wanted & ~rel).sum()), **dropped}
        row = {"round": rnd, "instructions": asked, "arms": arms,
               "arm_rewards": [round(st["reward"], 4) for st in stats], "generated": len(raw), "usable": len(texts),
               "relevant": int(rel.sum()), "kept": len(new), "rejected": rejected,
               "relevance": _mean(s["relevance"] for s in stats), "diversity": _mean(s["diversity"] for s in stats),
               "reward": _mean(s["reward"] for s in stats), "total_kept": len(self.records),
               "total_generated": self.generated, "seconds": clock.total(), "phase_seconds": clock.laps}
        self.rounds.append(row)
        self._write_records(new)
        self._save_state()
        self.emit({"kind": "reveal-round", "round": rnd, "kept": len(self.records), "generated": self.generated,
                   "reward": row["reward"], "total": cfg.n, "budget": cfg.budget})

    def _sample(self, prompts: list[str], seed: int) -> tuple[list[str], list[bool]]:
        """One continuation per prompt (:func:`spulctl.reveal.generate.sample_rows`). Several processes split the
        rows into contiguous runs (a prompt's samples sit together, so each rank prefills fewer distinct prompts),
        each rank sampling its run with its own seed, and gather them back in order; on a sharded base every rank
        samples them all alike, so the ranks run the same forward passes."""
        from spulctl.distributed import all_gather_json, sharded, world

        cfg, (rank, size) = self.cfg, world()
        split = size > 1 and not sharded()
        if not split:
            rank, size = 0, 1
        bounds = [round(i * len(prompts) / size) for i in range(size + 1)]
        mine = prompts[bounds[rank]:bounds[rank + 1]]
        raw, ended = gen.sample_rows(self.model, self.tok, mine, seed=seed * size + rank,  # no two ranks/rounds alike
                                     max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, stop=lambda t: gen.finished(t, cfg.max_sentences)) \
            if mine else ([], [])
        if not split:
            return raw, ended
        parts = all_gather_json([raw, ended])
        return [t for p in parts for t in p[0]], [e for p in parts for e in p[1]]

    def _prompt(self, instruction: str) -> str:
        if instruction not in self.prompts:
            self.prompts[instruction] = gen.format_prompt(self.tok, instruction)
        return self.prompts[instruction]

    def _arm_stats(self, j: int, slot: list[int], rel: Any, vecs: Any, produced: int) -> dict[str, float]:
        rows = [t for t, s in enumerate(slot) if s == j]
        relevance = float(rel[rows].sum()) / produced if produced else 0.0
        diversity = sc.diversity(vecs[rows], produced, self.kept_vecs)
        return {"relevance": relevance, "diversity": diversity, "reward": sc.harmonic(relevance, diversity)}

    def _keep(self, texts: list[str], vecs: Any, rel: Any, answers: Any, slot: list[int], asked: list[str],
              stats: list[dict], rnd: int) -> tuple[list[dict], dict[str, int]]:
        """Append the round's relevant texts that are neither exact nor near duplicates of a kept one.

        Returns:
            The new records and how many relevant texts were dropped, by reason (``duplicate``,
            ``near_duplicate``, ``over_n``: N was reached).
        """
        import numpy as np

        new, dropped = [], {"duplicate": 0, "near_duplicate": 0, "over_n": 0}
        for t, text in enumerate(texts):
            if not rel[t]:
                continue
            key = gen.normalise(text)
            reason = ("over_n" if len(self.records) >= self.cfg.n else "duplicate" if key in self.seen else
                      "near_duplicate" if sc.near_duplicate(vecs[t], self.kept_vecs, self.cfg.dedup_similarity)
                      else None)
            if reason:
                dropped[reason] += 1
                continue
            self.seen.add(key)
            self.kept_vecs = vecs[t:t + 1] if self.kept_vecs is None else np.vstack([self.kept_vecs, vecs[t:t + 1]])
            s = stats[slot[t]]
            label = None if sc.is_generative(self.cfg.task) else self.cfg.task.label_words[int(answers.label[t])]
            rec = {"text": text, "label": label,
                   "instruction": asked[slot[t]], "round": rnd, "relevance": round(s["relevance"], 4),
                   "reward": round(s["reward"], 4), "confidence": round(float(answers.confidence[t]), 4),
                   "mode": self.mode, "source": "reveal"}
            self.records.append(rec)
            new.append(rec)
        return new, dropped


class _Clock:
    """Seconds spent per phase of a round (summed when a phase comes back)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def _mean(values: Any) -> float:
    vals = list(values)
    return round(sum(vals) / len(vals), 4) if vals else 0.0


def generate_records(model: nn.Module, tok: Any, cfg: RevealConfig, emit: Emit | None = None,
                     checkpoint: Path | None = None) -> list[dict]:
    """Self-generate ``cfg.n`` records with an already-loaded model (what ``unlearn`` calls without data).

    Args:
        model: the frozen causal LM (its chat template, or ``cfg.plain_prompt``, formats the instructions).
        tok: its tokenizer.
        cfg: target, mode, budget, bandit and scoring options (``cfg.model``/``cfg.out`` are not used here).
        emit: progress callback (``reveal-start``, ``reveal-round``, ``note`` events).
        checkpoint: optional folder to stream kept records and state into.

    Returns:
        Kept records: ``text``, ``label`` (the model's restricted prediction), ``instruction``, ``round``,
        ``relevance``, ``reward``, ``confidence``, ``mode``, ``source``.

    Raises:
        ModelError: no chat template and not ``cfg.plain_prompt``.
        NothingRevealedError: (a DataError) no relevant text within the budget.
    """
    return RevealRun(model, tok, cfg, emit, checkpoint).run()


def checkpoint_dir(out: Path) -> Path:
    """Where a run writing ``out`` keeps its checkpoint."""
    return out.parent / f".{out.name}.ckpt"


def drop_checkpoint(path: Path | None) -> None:
    """Remove a checkpoint folder (after success, or after a failure that must leave nothing behind)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
