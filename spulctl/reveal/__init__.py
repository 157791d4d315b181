"""Reveal: make the model write the data to forget (or to retain) itself.

An instruction pool (hand-written templates + the model's paraphrases), a bandit that learns which instructions
make the model reveal relevant and diverse texts (:mod:`.bandit`), sampling and clean-up (:mod:`.generate`),
scoring (:mod:`.scoring`) and the loop (:mod:`.engine`).

Library use::

    from spulctl.reveal import RevealConfig, reveal, generate_records
    result = reveal(RevealConfig(model="smollm2-135m", entities=["Adam Sandler"], n=50, out=Path("rev.jsonl")))
    records = generate_records(model, tok, RevealConfig(entities=["Adam Sandler"], mode="retain", n=200))
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from spulctl.errors import DataError, OutputExistsError
from spulctl.reveal.config import BanditKind, Mode, RevealConfig, RevealResult
from spulctl.reveal.engine import NothingRevealedError, RevealRun, checkpoint_dir, drop_checkpoint, generate_records

__all__ = ["BanditKind", "Mode", "NothingRevealedError", "RevealConfig", "RevealResult", "generate_records",
           "reveal"]


def reveal(cfg: RevealConfig, on_event: Callable[[dict], None] | None = None) -> RevealResult:
    """Load ``cfg.model``, self-generate records and, with ``cfg.out``, write them with their report.

    The output appears only on success: kept records stream into ``.<out>.ckpt/`` (continued with
    ``cfg.resume``) and move into place at the end; a run that reveals nothing leaves no file behind.

    Raises:
        OutputExistsError: ``cfg.out`` exists and ``cfg.overwrite`` is False.
        ModelError: the model cannot be loaded, or has no chat template and ``cfg.plain_prompt`` is False.
        DataError: no relevant text within the budget.
    """
    from spulctl.distributed import fsdp_requested, load_kwargs, rank_private_dir, shard_frozen
    from spulctl.models import load_model
    from spulctl.reveal import report as rep

    emit = on_event or (lambda _e: None)
    out = Path(cfg.out) if cfg.out else None
    if out is not None and (private := rank_private_dir(out)) is not None:  # accelerate rank > 0: shows nothing
        out, emit = private, (lambda _e: None)
    ckpt = checkpoint_dir(out) if out else None
    if out is not None:
        if out.exists() and not cfg.overwrite:
            raise OutputExistsError(f"{out}: exists (pass --overwrite to replace it)")
        if out.suffix != ".jsonl":
            raise DataError(f"-o {out}: the output is a .jsonl file")
        if ckpt.exists() and not cfg.resume:
            drop_checkpoint(ckpt)
        elif cfg.resume and not ckpt.exists():
            emit({"kind": "note", "message": f"--resume: no checkpoint at {ckpt}; starting fresh"})
    model, tok = load_model(cfg.model, **{"dtype": cfg.dtype, **load_kwargs(cfg.dtype)})
    if fsdp_requested():  # accelerate launch --use_fsdp: each rank keeps 1/world of every decoder layer
        for p in model.parameters():
            p.requires_grad_(False)
        shard_frozen(model)
    start = time.perf_counter()
    run = RevealRun(model, tok, cfg, emit, ckpt)
    try:
        records = run.run()
    except NothingRevealedError:
        drop_checkpoint(ckpt)  # a run that revealed nothing leaves nothing behind
        raise
    seconds = time.perf_counter() - start
    result = RevealResult(records, run.rounds, run.generated, seconds)
    if out is None:
        return result
    result.report = rep.report_path(out)
    rep.write_report(result.report, rep.summary(cfg, run.rounds, len(records), run.generated, seconds))
    if cfg.plot:
        result.plot = rep.write_plot(rep.plot_path(out), run.rounds)
    os.replace(ckpt / "records.jsonl", out)  # the records were written and flushed round by round
    drop_checkpoint(ckpt)
    result.out = out
    return result
