"""The Release loop: reveal from the current model, check, train a new module, freeze, stack — round after round.

Round 1 trains on the forget records ``unlearn`` prepared (the given file, or what the base model revealed). Each
later round k asks the *current* model (base + the modules so far) to reveal again (the reveal call is injected by
the pipeline as ``ctx.extra["reveal"]``: ``(model, k) -> records``), labels what it wrote with the base model's
answer (the knowledge to remove; a relabel may drop texts that hold none), and measures the share of those records
the current model still answers with that label. Under ``stop_at`` percent the run ends: the model no longer shows
what it knew. Otherwise a new module is trained on
them through :func:`spulctl.train.fit` (same retain rows, same kind of batches and step budget as round 1) and
stacked. Every round adds a row to the table stored in the manifest: revealed records and their mean relevance,
the share still known before the round, forget / retain accuracy on the held-out slices after it, the penalty.

Finished rounds are checkpointed (stack + table) in ``<ckpt>/release/``: an interrupted run resumes at its last
finished round.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.io import sha256_text, write_json_atomic
from spulctl.train import TrainResult, fit

if TYPE_CHECKING:
    from spulctl.methods.release import Release

STATE = "state.json"
TENSORS = "stack.safetensors"


def run_rounds(method: Release, objective: Any, train_cfg: Any, ckpt: Path, resume: bool, emit: Any,
               run_key: dict, evaluate: Any = None, eval_every: int = 0, keep_best: bool = False,
               plan: Any = None, should_stop: Any = None) -> TrainResult:
    """Run rounds 1..K (``settings.release_rounds``); arguments as :func:`spulctl.train.fit` takes them for
    round 1 (later rounds get their own batches and budget). Returns the summed :class:`TrainResult`; the table
    lands in ``method.rounds`` and the reason the loop ended in ``method.stop_reason``."""
    ctx, s = method.ctx, method.ctx.settings
    state_dir = Path(ckpt) / "release"
    done = _load_state(state_dir, method, run_key) if resume else 0
    if done == 0:
        method.before = method.heldout_metrics()
    total = TrainResult(0, 0.0, 0.0)
    method.stop_reason = f"round limit ({s.release_rounds})"
    for k in range(done + 1, s.release_rounds + 1):
        t0 = time.perf_counter()
        revealed = ctx.forget if k == 1 else _reveal(ctx, method, k, emit)
        records = revealed if k == 1 else method.relabel(revealed)
        row = {"round": k, "revealed": len(revealed), "records": len(records),
               "relevance": _mean(r.get("relevance") for r in records),
               "known_before": method.known_share(records) if records else 0.0,
               "data_sha256": sha256_text(json.dumps([[r["text"], r.get("label", r.get("answer"))] for r in records]))}
        emit({"kind": "note", "message": f"release round {k}/{s.release_rounds}: {len(records)} forget records, "
                                         f"{row['known_before']:.1f} % still answered with their label"})
        if k > 1 and (not records or row["known_before"] < s.stop_at):
            method.stop_reason = (f"round {k}: nothing revealed" if not revealed else
                                  f"round {k}: none of the {len(revealed)} revealed texts holds anything the base "
                                  "model answers to forget" if not records else
                                  f"round {k}: {row['known_before']:.1f} % of the revealed records still answered "
                                  f"with their label, under --stop-at {s.stop_at:g}")
            method.rounds.append({**row, "trained": False})
            break
        cfg_k, plan_k = train_cfg, plan
        if k > 1:
            objective = method.round_objective(method.training_rows(records, k), k)
            cfg_k, plan_k = _budget(method, train_cfg, len(records), method.n_forget, k, plan is not None)
        result = fit(objective, cfg_k, Path(ckpt) / f"round-{k}", resume, emit,
                     {**run_key, "release_round": k, "round_data": row["data_sha256"]}, evaluate, eval_every,
                     keep_best, plan=plan_k, should_stop=should_stop)
        row.update(trained=True, steps=result.steps, penalty=method.finish_round(), **method.heldout_metrics(),
                   seconds=round(time.perf_counter() - t0, 1), loss=result.history[-1] if result.history else {})
        method.rounds.append(row)
        emit({"kind": "release-round", **row})
        emit({"kind": "note", "message": _row_text(row)})
        total = _add(total, result)
        _save_state(state_dir, method, run_key)
    return total


def _reveal(ctx: Any, method: Release, k: int, emit: Any) -> list[dict]:
    """Records the current model reveals (none when the run has no reveal hook: no names and no target)."""
    reveal = ctx.extra.get("reveal")
    if reveal is None:
        emit({"kind": "note", "message": f"release round {k}: nothing to reveal by (no --forget-entities or "
                                         "--forget-target); stopping"})
        return []
    return list(reveal(method.model, k))


def _budget(method: Release, train_cfg: Any, n_records: int, n_rows: int, k: int,  # n_rows: forget rows
            mixed: bool) -> tuple[Any, Any]:
    """Round k's training config and batches: a forget-share plan sized from its records (as round 1's), or the
    data's own mix over ``train_cfg.epochs``."""
    if not mixed:
        return train_cfg, None
    budget, batches = mixed_budget(method.ctx.settings, n_records, n_rows, len(method.retain_examples),
                                   method.ctx.settings.train.seed + k)
    return replace(train_cfg, epochs=budget.rounds, max_steps=budget.steps), batches.round


def mixed_budget(s: Any, n_records: int, n_rows: int, n_retain: int, seed: int) -> tuple[Any, Any]:
    """A round's step budget (passes over its ``n_records`` forget records, within ``--min-steps`` /
    ``--budget-steps`` or ``--max-steps``) and its forget-share batches over ``n_rows`` forget + ``n_retain``
    retain rows, seeded with ``seed``. Returns ``(StepBudget, MixedBatches)``."""
    from spulctl.data.sampling import MixedBatches, step_budget

    per_batch = MixedBatches(n_rows, n_retain, s.train.batch_size, s.forget_share, 1, seed).forget_per_batch
    cap = s.budget_steps if s.train.max_steps is None else s.train.max_steps
    budget = step_budget(n_records, per_batch, s.forget_passes, min(s.min_steps, cap), cap, s.rounds)
    return budget, MixedBatches(n_rows, n_retain, s.train.batch_size, s.forget_share, budget.steps_per_round, seed)


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _add(a: TrainResult, b: TrainResult) -> TrainResult:
    return TrainResult(a.steps + b.steps, a.seconds + b.seconds, b.samples_per_s, a.history + b.history,
                       a.resumed_from + b.resumed_from, a.evals + b.evals, b.best or a.best,
                       b.stopped_early)


def _row_text(row: dict) -> str:
    pct = lambda v: "–" if v is None else f"{v:.1f} %"  # noqa: E731
    return (f"release round {row['round']} done: forget {pct(row.get('forget_acc'))}, retain "
            f"{pct(row.get('retain_acc'))} on held-out slices, penalty {row['penalty']:.4g}, "
            f"{row['steps']} steps, {row['seconds']} s")


# ------------------------------------------------------------------ round checkpoints
def _save_state(folder: Path, method: Release, run_key: dict) -> None:
    """Stack tensors first, then the JSON naming them (a kill in between leaves the previous state intact)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    k = len([r for r in method.rounds if r.get("trained")])
    tensors = {f"{name}.{part}": t.contiguous() for name, (a, b) in method.stack.items()
               for part, t in (("A", a), ("B", b))}
    name = f"stack-{k}.safetensors"
    save_file(tensors, str(folder / f".{name}.tmp"))
    (folder / f".{name}.tmp").replace(folder / name)
    write_json_atomic(folder / STATE, {"key": sha256_text(json.dumps(run_key, sort_keys=True, default=str)),
                                       "done": k, "tensors": name, "rounds": method.rounds,
                                       "before": method.before})
    for old in folder.glob("stack-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _load_state(folder: Path, method: Release, run_key: dict) -> int:
    """Restore finished rounds; returns how many (0: nothing to resume, or a checkpoint of another run)."""
    from safetensors.torch import load_file

    path = folder / STATE
    if not path.is_file():
        return 0
    state = json.loads(path.read_text())
    if state.get("key") != sha256_text(json.dumps(run_key, sort_keys=True, default=str)):
        from spulctl.train import TrainingError

        raise TrainingError(f"{folder}: Release checkpoint belongs to a different run; remove it or pass --overwrite")
    flat = load_file(str(folder / state["tensors"]))
    names = sorted({k.rsplit(".", 1)[0] for k in flat})
    method.restore({n: (flat[f"{n}.A"], flat[f"{n}.B"]) for n in names}, state["rounds"], state["before"])
    method.ctx.emit({"kind": "note", "message": f"resuming Release after round {state['done']}"})
    return int(state["done"])
