"""``spulctl plan``: the memory a run needs, from the model's config alone."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from spulctl.cli.common import BatchSizeOpt, DtypeOpt, MicroBatchOpt, ModelOpt, console, handle_errors

ROWS = {"weights": "frozen base weights", "activations": "saved activations (a slice)",
        "reference": "cached reference (n_retain × d, fp32)", "trainable": "trainable parameters (fp32)",
        "gradients": "their gradients", "optimizer": "AdamW moments (2×)",
        "runtime": "process + fingerprint copies (CPU)"}


@handle_errors
def plan(
    model: ModelOpt = "smollm2-135m",
    method: Annotated[str, typer.Option(help="spul | ga | rl | ga_kl | ga_gd | hard_prompt | icul")] = "spul",
    batch_size: BatchSizeOpt = 16,
    micro_batch: MicroBatchOpt = 0,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", "-p", help="Soft prompt length p.")] = 30,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens of a batch's longest example (a step pads "
                                            "to it; unlearn's --max-length caps it).")] = 128,
    retain: Annotated[int, typer.Option(help="Retain rows in the cached reference.")] = 1000,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (baselines).")] = 16,
    full: Annotated[bool, typer.Option("--full", help="Baselines: full fine-tuning instead of LoRA.")] = False,
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="NF4 frozen base (bitsandbytes).")] = False,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="int8 frozen base (bitsandbytes).")] = False,
    dtype: DtypeOpt = "auto",
    device: Annotated[str, typer.Option(help="cuda (device memory) | cpu (the process's peak RSS).")] = "cuda",
    processes: Annotated[int, typer.Option(help="Data-parallel ranks (accelerate launch --num_processes); the "
                                                "figures are per rank.")] = 1,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Frozen decoder layers sharded across the ranks.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the memory a training run needs (weights, activations with and without --micro-batch, reference cache,
    optimizer) from the model's config alone: no weights are loaded."""
    from spulctl.errors import SpulError
    from spulctl.plan import PlanSettings
    from spulctl.plan import plan as run

    if load_in_4bit and load_in_8bit:
        raise SpulError("--load-in-4bit and --load-in-8bit: choose one")
    quantization = "4bit" if load_in_4bit else "8bit" if load_in_8bit else "none"
    settings = PlanSettings(method=method, full=full, batch_size=batch_size, micro_batch=micro_batch,
                            prompt_tokens=prompt_tokens, max_length=max_length, retain=retain, lora_r=lora_r,
                            quantization=quantization, dtype=dtype, device=device, processes=processes, fsdp=fsdp)
    result = run(model, settings)
    if as_json:
        console.print_json(json.dumps(result))
        return
    shape, mib = result["shape"], result["components"]
    title = (f"{model}: {result['params'] / 1e9:.3g}B params, d={shape['hidden']}, L={shape['layers']}, "
             f"{method}, batch {batch_size} × {result['tokens']} tokens, {quantization}, {device}"
             + (f", per rank of {processes}{' (FSDP)' if fsdp else ''}" if processes > 1 else ""))
    table = Table("component", "MiB", "what", title=title)
    for name, value in mib.items():
        table.add_row(name, f"{value:,.0f}", ROWS.get(name, ""))
    sliced = f" (slices of {settings.slice})" if settings.slice < settings.per_rank else ""
    table.add_row("total", f"{result['total_mib']:,.0f}", f"peak{sliced}", style="bold")
    if settings.slice < settings.per_rank:
        table.add_row("total, whole batch", f"{result['total_whole_batch_mib']:,.0f}",
                      f"without --micro-batch (activations {result['activations_whole_batch_mib']:,.0f} MiB)")
    if result["peak_rss_mib"] is not None:
        table.add_row("peak RSS", f"{result['peak_rss_mib']:,.0f}",
                      f"+ {result['heap_mib']:,.0f} MiB freed buffers glibc's default allocator keeps "
                      "(MALLOC_MMAP_THRESHOLD_=131072: the total)")
    console.print(table)
    console.print(f"trainable parameters: {result['trainable_params']:,}; config: {result['config']}",
                  highlight=False)
