"""Multi-process runs started by ``accelerate launch`` or ``torchrun``: who am I, what rank 0 knows, sharding.

Data parallelism is the training loop's business (:func:`spulctl.train.forward_backward` splits each batch by
rank and all-reduces the trainable gradients). This module holds what the loop and the methods share:

* :func:`world` — ``(rank, world size)``; the process group (gloo on the CPU, NCCL on GPUs) starts on first use.
* :func:`rank_private_dir` — where ranks above 0 write, so only rank 0's artifacts exist.
* :func:`broadcast_json` / :func:`broadcast_tensors` / :func:`all_gather_json` — rank 0's state to every rank
  (a resumed run, a cached reference) and the ranks' results to all, as JSON bytes and tensors (no pickles).
* :func:`shard_frozen` — FSDP for the frozen base: each decoder layer's weights are split across the ranks and
  gathered layer by layer in the forward and backward passes (torch ``fully_shard``); the embeddings, the final
  norm and the head stay whole, so the soft prompt is built and scored as in one process.
* :func:`lockstep` — a sharded base needs every rank to run the same number of forward passes: the count to pad
  each rank's share to. The shared-prefix step is off then (its prompt keys/values come from a forward pass whose
  output feeds nothing, so FSDP would not gather the weights for its backward).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import SpulError

if TYPE_CHECKING:
    import torch
    from torch import nn

_SHARDED = {"on": False}


def world() -> tuple[int, int]:
    """``(rank, world size)`` of a data-parallel run (``accelerate launch``/``torchrun`` set ``WORLD_SIZE``); the
    process group (gloo on the CPU, NCCL on GPUs) is started on first use. ``(0, 1)`` in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if not _on_cpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("gloo" if _on_cpu() else "nccl")
    return dist.get_rank(), dist.get_world_size()


def _on_cpu() -> bool:
    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def rank_device() -> str:
    """This rank's device: ``cpu`` (gloo), or ``cuda:LOCAL_RANK`` (NCCL needs the tensors there)."""
    return "cpu" if _on_cpu() else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def rank_private_dir(out: Path) -> Path | None:
    """Where ranks above 0 of a data-parallel run write instead of ``out``: a private temporary directory, removed
    at exit, so only rank 0's artifact, checkpoints and log exist. None on rank 0 and in a single process."""
    rank = world()[0]
    if rank == 0:
        return None
    import atexit
    import shutil
    import tempfile

    private = Path(tempfile.mkdtemp(prefix=f"spulctl-rank{rank}-"))
    atexit.register(shutil.rmtree, private, True)
    return private / out.name


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (``obj`` is ignored elsewhere); ``obj`` itself in one process."""
    import torch
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return obj
    dev = rank_device()
    data = json.dumps(obj).encode() if rank == 0 else b""
    n = torch.tensor([len(data)], dtype=torch.long, device=dev)
    dist.broadcast(n, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if rank == 0
           else torch.empty(int(n), dtype=torch.uint8, device=dev))
    dist.broadcast(buf, 0)
    return json.loads(buf.cpu().numpy().tobytes().decode()) if rank else obj


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors on every rank (shapes and dtypes travel as JSON first; CPU tensors come back)."""
    import torch
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return dict(tensors or {})
    spec = broadcast_json({k: [list(t.shape), str(t.dtype).removeprefix("torch.")]
                           for k, t in (tensors or {}).items()} if rank == 0 else None)
    out = {}
    for name, (shape, dtype) in spec.items():
        buf = (tensors[name].contiguous().to(rank_device()) if rank == 0
               else torch.empty(shape, dtype=getattr(torch, dtype), device=rank_device()))
        dist.broadcast(buf, 0)
        out[name] = buf.cpu()
    return out


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-able ``obj``, in rank order (``[obj]`` in one process)."""
    import torch
    import torch.distributed as dist

    _rank, size = world()
    if size == 1:
        return [obj]
    dev = rank_device()
    data = json.dumps(obj).encode()
    n = torch.tensor([len(data)], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buf = buf.to(dev)
    bufs = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(bufs, buf)
    return [json.loads(b[:int(s.item())].cpu().numpy().tobytes().decode()) for b, s in zip(bufs, sizes, strict=True)]


def from_rank0(read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0 (it holds the checkpoint directory), its JSON-able result on every rank. A
    :class:`~spulctl.errors.SpulError` raised by ``read`` is raised on every rank, so no rank is left waiting in the
    next collective and the run ends with the one-line error."""
    rank, size = world()
    if size == 1:
        return read()
    got = None
    if rank == 0:
        try:
            got = {"value": read()}
        except SpulError as exc:
            got = {"error": str(exc)}
    got = broadcast_json(got)
    if "error" in got:
        raise SpulError(got["error"])
    return got["value"]


def fsdp_requested() -> bool:
    """``accelerate launch --use_fsdp`` (``ACCELERATE_USE_FSDP``) or ``SPULCTL_FSDP=1``, in a multi-process run."""
    asked = (os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
             or os.environ.get("SPULCTL_FSDP", "").lower() in ("1", "true"))
    return asked and world()[1] > 1


def sharded() -> bool:
    """Whether this process's frozen base is sharded (:func:`shard_frozen` ran)."""
    return _SHARDED["on"]


def shard_frozen(model: nn.Module, trains_base: bool = False) -> int:
    """Shard the frozen decoder layers of ``model`` across the ranks (FSDP, torch ``fully_shard``), in place.

    The layers are the modules whose class the model names in ``_no_split_modules`` (HF: e.g.
    ``LlamaDecoderLayer``); every parameter must be frozen (a trainable weight inside a layer would need a
    sharded optimizer: LoRA methods train data-parallel only). ``FSDP_RESHARD_AFTER_FORWARD=false`` (accelerate's
    ``--fsdp_reshard_after_forward false``) keeps each gathered layer until the backward pass.

    Args:
        model: the loaded base, every parameter frozen.
        trains_base: the method will add trainable weights to the layers (LoRA, fine-tuning): refused.

    Returns:
        The number of layers sharded.

    Raises:
        SpulError: a trainable parameter, a quantized base, or no layer class to shard.
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _rank, size = world()
    _refuse(trains_base or any(p.requires_grad for p in model.parameters()),
            bool(getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None)))
    kinds = set(getattr(model, "_no_split_modules", None) or [])
    picked = [name for name, m in model.named_modules() if type(m).__name__ in kinds]
    outer = [n for n in picked if not any(n.startswith(f"{o}.") for o in picked)]  # nested ones go with their parent
    layers = [model.get_submodule(n) for n in outer]
    if not layers:
        raise SpulError(f"FSDP: {type(model).__name__} names no decoder layer class (_no_split_modules) to shard")
    # accelerate passes true/false, or FSDP1 strategy names: only FULL_SHARD reshards after the forward
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in (
        "false", "0", "no_reshard", "shard_grad_op", "2", "3")
    mesh = init_device_mesh("cpu" if _on_cpu() else "cuda", (size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    if not _on_cpu():
        model.to(torch.device(rank_device()))
    _SHARDED["on"] = True
    return len(layers)


def lockstep(counts: list[int]) -> int:
    """How many forward passes this rank runs, given every rank's own count (each rank can work them all out from
    the batch): the largest when the base is sharded (a rank with fewer real ones pads with passes whose result it
    discards: every pass gathers each layer's shards from all ranks), this rank's own otherwise."""
    return max(counts) if sharded() else counts[world()[0]]


def load_kwargs(dtype: str, trains_base: bool = False, quantized: bool = False) -> dict[str, str]:
    """``load_model`` arguments for an FSDP run: load on the CPU (the layers reach the GPU as shards), in the dtype
    ``auto`` would pick on the GPU. Empty when FSDP is off.

    Raises:
        SpulError: FSDP asked for a method that trains weights inside the layers, or a quantized base (checked
            before anything is loaded).
    """
    if not fsdp_requested():
        return {}
    _refuse(trains_base, quantized)
    return {"device": "cpu", "dtype": "bfloat16" if dtype == "auto" and not _on_cpu() else dtype}


def _refuse(trains_base: bool, quantized: bool) -> None:
    if trains_base:
        raise SpulError("FSDP shards frozen bases only: LoRA and full fine-tuning methods run data-parallel "
                        "(launch without --use_fsdp)")
    if quantized:
        raise SpulError("FSDP with a quantized base (--load-in-4bit/--load-in-8bit) is not supported: drop one")


def inference() -> Any:
    """``torch.inference_mode()``, or ``torch.no_grad()`` when the base is sharded: FSDP's gathered weights live in
    buffers reused by the training passes, which tensors made in inference mode cannot be."""
    import torch

    return torch.no_grad() if sharded() else torch.inference_mode()
