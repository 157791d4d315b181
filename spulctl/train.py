"""The one training loop: epochs, AdamW, warmup + cosine schedule, clipping, checkpoints, resume, progress.

Every method (familiarize, SPUL, the baselines) supplies an :class:`Objective` — its trainable parameters and
a loss over a list of example indices — and this loop does the rest. Checkpoints are safetensors (parameters,
optimizer moments, RNG state) + JSON (counters, schedule, history), written atomically, so a killed run
resumes from its last checkpoint and ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spulctl.distributed import broadcast_tensors, from_rank0, lockstep, world
from spulctl.errors import SpulError
from spulctl.io import sha256_text, write_json_atomic

if TYPE_CHECKING:
    import torch

CKPT_STATE = "checkpoint.json"


class TrainingError(SpulError):
    """Training cannot go on (non-finite loss, checkpoint from another run)."""


@dataclass
class TrainConfig:
    """Optimisation settings (paper defaults for SPUL; familiarize overrides some).

    Attributes:
        lr: peak learning rate.
        epochs: passes over the data.
        batch_size: examples per step.
        warmup_ratio: share of steps with linear warmup.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm (0 = off).
        schedule: ``cosine`` or ``linear`` decay after warmup, or ``constant``.
        seed: seeds data order, initialisation and dropout.
        checkpoint_every: steps between checkpoints (0 = only at epoch ends).
        max_steps: stop early after this many steps (None = run all epochs).
        micro_batch: run each step's forward/backward over slices of this many examples and add up their
            gradients (0 = the whole batch at once): the same step in a fraction of the activation memory.
    """

    lr: float = 1e-4
    epochs: int = 10
    batch_size: int = 16
    warmup_ratio: float = 0.06
    weight_decay: float = 0.001
    max_grad_norm: float = 0.3
    schedule: str = "cosine"
    seed: int = 0
    checkpoint_every: int = 200
    max_steps: int | None = None
    micro_batch: int = 0

    def __post_init__(self) -> None:
        checks = {"lr": self.lr > 0, "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
                  "warmup_ratio": 0 <= self.warmup_ratio < 1, "max_grad_norm": self.max_grad_norm >= 0,
                  "schedule": self.schedule in ("cosine", "linear", "constant"),
                  "checkpoint_every": self.checkpoint_every >= 0, "micro_batch": self.micro_batch >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise SpulError(f"training config: invalid {bad[0]}={getattr(self, bad[0])!r}")


class Objective(Protocol):
    """What a method gives the loop."""

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Trainable parameters, with stable names (checkpoint keys)."""

    def loss(self, indices: list[int], within: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Loss over the examples ``indices``: a dict with ``"loss"`` (scalar to minimise) and named parts.

        With ``within`` (the whole batch, ``indices`` being a slice of it), the slice's share of the batch's
        loss: the shares of a batch's slices add up to its loss (and their gradients to its gradient).
        """

    def lengths(self) -> list[int]:
        """Token length per example (for length-bucketed batches)."""


@dataclass
class TrainResult:
    """What a finished run reports.

    Attributes:
        steps: optimiser steps taken in total (across resumes).
        seconds: wall time of this process's share of training.
        samples_per_s: throughput of this process's share.
        history: per-epoch mean of each loss part.
        resumed_from: global step restored from a checkpoint (0 if fresh).
        evals: per evaluated epoch, the metrics ``evaluate`` returned.
        best: the best of ``evals`` (by ``score``).
        stopped_early: the epoch after which ``evaluate`` asked to stop (None: ran the whole budget).
    """

    steps: int
    seconds: float
    samples_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    evals: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    stopped_early: int | None = None


Event = Callable[[dict[str, Any]], None]


def micro_slices(indices: list[int], micro_batch: int) -> list[list[int]]:
    """A step's batch in slices of ``micro_batch`` examples (one slice when 0 or at least the batch)."""
    if micro_batch <= 0 or micro_batch >= len(indices):
        return [indices]
    return [indices[i:i + micro_batch] for i in range(0, len(indices), micro_batch)]


def _all_reduce(objective: Objective, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum the ranks' gradients (the trainable parameters only: the frozen base is never communicated) and parts."""
    import torch
    import torch.distributed as dist

    for _, p in objective.named_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, {k: float(v) for k, v in parts.items()})
    keys = list(dict.fromkeys(k for g in gathered for k in g))
    return {k: torch.tensor(sum(g.get(k, 0.0) for g in gathered)) for k in keys}


def forward_backward(objective: Objective, indices: list[int], micro_batch: int = 0,
                     step: int = 0) -> dict[str, torch.Tensor]:
    """Loss and gradients (accumulated into ``.grad``) of one batch, in slices of ``micro_batch`` examples.

    In a data-parallel run each rank takes every world-th example of the batch, computes its share of the whole
    batch's loss, and the ranks' gradients are summed: the same step as one process with the same batch. On a
    sharded base (FSDP) a rank with fewer slices than another runs padding passes (one example, loss × 0), so that
    every rank runs as many passes through the sharded layers.

    Returns:
        The batch's loss parts (detached): the sum of the slices' shares.

    Raises:
        TrainingError: a slice's loss is not finite (``step`` names the step in the message).
    """
    import torch

    rank, size = world()
    slices = [s for s in micro_slices(indices[rank::size], micro_batch) if s]
    total: dict[str, torch.Tensor] = {}
    for part in slices:
        parts = objective.loss(part) if len(slices) == 1 and size == 1 else objective.loss(part, within=indices)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss.item()}) at step {step}; lower --lr or check the data")
        loss.backward()
        for k, v in parts.items():
            total[k] = total[k] + v.detach() if k in total else v.detach()
    counts = [sum(1 for s in micro_slices(indices[r::size], micro_batch) if s) for r in range(size)]
    for _ in range(lockstep(counts) - len(slices)):  # sharded base: match the other ranks' passes, add nothing
        (objective.loss(indices[:1], within=indices)["loss"] * 0.0).backward()
    return _all_reduce(objective, total) if size > 1 else total


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warm = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else max(0.0, 1 - frac)

    return f


def fit(objective: Objective, cfg: TrainConfig, ckpt_dir: str | Path | None = None, resume: bool = False,
        on_event: Event | None = None, run_key: dict | None = None,
        evaluate: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0,
        keep_best: bool = False, plan: Callable[[int], list[list[int]]] | None = None,
        should_stop: Callable[[list[dict[str, float]]], bool] | None = None) -> TrainResult:
    """Train ``objective`` with AdamW.

    Args:
        objective: parameters + loss.
        cfg: optimisation settings.
        ckpt_dir: where checkpoints go (None = no checkpoints).
        resume: continue from the checkpoint in ``ckpt_dir`` if there is one.
        on_event: progress callback; receives ``{"kind": "start"|"step"|"epoch"|"checkpoint", ...}``.
        run_key: what identifies the run (config, data hashes); a checkpoint of another run is refused.
        evaluate: called after every ``eval_every``-th epoch with the epoch number; returns metrics with a
            ``score`` (higher is better).
        keep_best: end with the parameters of the best-scoring evaluated epoch instead of the last (ties: the
            later epoch, :func:`spulctl.selection.best_index`).
        plan: ``epoch -> batches of indices`` (e.g. :class:`spulctl.data.sampling.MixedBatches.round`), every
            epoch the same number of batches; default: length-bucketed shuffles of all examples.
        should_stop: ``evals so far -> bool``, asked after each evaluation (e.g.
            :meth:`spulctl.selection.StopRule.met`); true ends the run there. The evals live in the checkpoint, so
            a resumed run decides on the same history.

    Raises:
        TrainingError: non-finite loss, or a checkpoint that belongs to a different run.
    """
    import torch

    from spulctl.step import bucketed_batches

    emit = on_event or (lambda _e: None)
    save_dir, (rank, size) = ckpt_dir, world()
    if rank > 0:  # data-parallel: only rank 0 reports and writes checkpoints (every rank may resume)
        emit, save_dir = (lambda _e: None), None
    elif size > 1:
        emit({"kind": "note", "message": f"data-parallel: {size} processes, each {cfg.batch_size // size}+ "
                                         f"examples of every batch; only the trainable parameters all-reduced"})
    names, params = zip(*objective.named_parameters(), strict=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = objective.lengths()
    if plan is None:
        def plan(epoch: int) -> list[list[int]]:
            return bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch)
    n_batches = len(plan(0))
    total = n_batches * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, n_batches * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    key = sha256_text(json.dumps({"cfg": asdict(cfg), "run": run_key or {}}, sort_keys=True, default=str))
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [], "sums": {}, "key": key,
             "evals": [], "best": None}
    best: dict[str, torch.Tensor] = {}
    torch.manual_seed(cfg.seed)
    held: dict[str, dict] = {}

    def read() -> dict | None:  # rank 0 holds the checkpoint directory
        if not (ckpt_dir is not None and resume and (Path(ckpt_dir) / CKPT_STATE).is_file()):
            return None
        saved, held["tensors"] = _read_checkpoint(Path(ckpt_dir), key)
        return saved

    saved = from_rank0(read)  # rank 0's checkpoint on every rank: a run resumes at any world size
    if saved is not None:
        tensors = broadcast_tensors(held.get("tensors"))
        state, best = _apply_checkpoint(saved, tensors, dict(zip(names, params, strict=True)), opt, sched)
    resumed_from = state["global_step"]
    emit({"kind": "start", "total": total, "resumed_from": resumed_from, "examples": len(lengths)})
    t0, seen = time.perf_counter(), 0
    while state["epoch"] < cfg.epochs and state["global_step"] < total and not state.get("stopped_early"):
        batches = plan(state["epoch"])
        for b in range(state["step_in_epoch"], len(batches)):
            # forward + backward on one batch (in micro-batches if asked)
            opt.zero_grad(set_to_none=True)
            parts = forward_backward(objective, batches[b], cfg.micro_batch, state["global_step"] + 1)
            # clip, step, schedule
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            # bookkeeping
            state["global_step"] += 1
            state["step_in_epoch"] = b + 1
            seen += len(batches[b])
            for k, v in parts.items():
                s = state["sums"].setdefault(k, [0.0, 0])
                s[0], s[1] = s[0] + float(v.detach()) * len(batches[b]), s[1] + len(batches[b])
            elapsed = time.perf_counter() - t0
            emit({"kind": "step", "step": state["global_step"], "total": total, "epoch": state["epoch"] + 1,
                  "parts": {k: float(v.detach()) for k, v in parts.items()}, "samples_per_s": seen / elapsed,
                  "lr": sched.get_last_lr()[0]})
            last = state["global_step"] >= total
            if last:
                break
            if save_dir is not None and cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                _save_checkpoint(Path(save_dir), names, params, opt, sched, state, best)
                emit({"kind": "checkpoint", "step": state["global_step"]})
        # epoch end: record the mean of each loss part, move on, checkpoint
        state["history"].append({k: s[0] / max(1, s[1]) for k, s in state["sums"].items()})
        emit({"kind": "epoch", "epoch": state["epoch"] + 1, "means": state["history"][-1]})
        state.update(epoch=state["epoch"] + 1, step_in_epoch=0, sums={})
        if evaluate is not None and eval_every and state["epoch"] % eval_every == 0:
            metrics = {"epoch": state["epoch"], **evaluate(state["epoch"])}
            state["evals"].append(metrics)
            emit({"kind": "evaluated", **metrics})
            if state["best"] is None or metrics["score"] >= state["best"]["score"]:
                state["best"] = metrics
                best = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
            if should_stop is not None and should_stop(state["evals"]):
                state["stopped_early"] = state["epoch"]
        if save_dir is not None:
            _save_checkpoint(Path(save_dir), names, params, opt, sched, state, best)
        if state.get("stopped_early"):
            emit({"kind": "note", "message": f"stop rule met after epoch {state['epoch']} "
                                             f"(step {state['global_step']} of {total})"})
            break
    if keep_best and best:
        with torch.no_grad():
            for n, p in zip(names, params, strict=True):
                p.copy_(best[n])
        emit({"kind": "note", "message": f"keeping epoch {state['best']['epoch']} (best score "
                                         f"{state['best']['score']:.2f})"})
    elapsed = time.perf_counter() - t0
    return TrainResult(state["global_step"], elapsed, seen / elapsed if elapsed > 0 else 0.0, state["history"],
                       resumed_from, state["evals"], state["best"], state.get("stopped_early"))


def _save_checkpoint(folder: Path, names, params, opt, sched, state: dict, best: dict) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in zip(names, params, strict=True):
        tensors[f"param/{name}"] = p.detach().cpu().contiguous()
        for k, v in opt.state.get(p, {}).items():
            tensors[f"optim/{name}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    for name, t in best.items():
        tensors[f"best/{name}"] = t.cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    # Tensors go to a file named by step, then the JSON that names it replaces the old JSON: a kill at any
    # point leaves a JSON that points at a complete tensor file.
    name = f"checkpoint-{state['global_step']}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / name)
    write_json_atomic(folder / CKPT_STATE, {**state, "tensors": name, "scheduler": sched.state_dict()})
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_checkpoint(folder: Path, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint's JSON state and tensors; refuses one written by another run."""
    from safetensors.torch import load_file

    state = json.loads((folder / CKPT_STATE).read_text())
    if state.get("key") != key:
        raise TrainingError(f"{folder}: checkpoint belongs to a different run (other settings or data); "
                            "remove it or pass --overwrite")
    return state, load_file(str(folder / state.pop("tensors")))


def _apply_checkpoint(state: dict, tensors: dict, named: dict, opt, sched) -> tuple[dict, dict]:
    """Load a checkpoint's parameters, optimizer moments, RNG and schedule; returns (loop state, best params)."""
    import torch

    state = dict(state)
    state.setdefault("evals", [])
    state.setdefault("best", None)
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(tensors[f"param/{name}"])
            moments = {k.split("/")[-1]: v for k, v in tensors.items() if k.startswith(f"optim/{name}/")}
            if moments:
                opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in moments.items()}
    torch.set_rng_state(tensors["rng/torch"])
    sched_state = state.pop("scheduler")
    sched_state.pop("lr_lambdas", None)
    sched.load_state_dict({**sched.state_dict(), **sched_state})
    for group, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
        group["lr"] = lr
    best = {k.removeprefix("best/"): v for k, v in tensors.items() if k.startswith("best/")}
    return state, best
