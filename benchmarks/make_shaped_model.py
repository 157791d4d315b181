"""Build a random-weight model of a given shape (nothing downloaded): a Llama-2-7B-shaped base for the GPU figures.

The shape comes from ``spulctl plan``'s config reader (a built-in public shape such as ``llama-2-7b``, a config.json
or a model directory); ``--layers`` keeps fewer decoder layers (a step's time and activation memory scale linearly
in the layers, the weights too, and the embeddings and head do not). The tokenizer is copied from ``--tokenizer``
(SmolLM2's by default) and the vocabulary widened to cover it, so ``spulctl unlearn`` runs on real splits.

Usage:
    python benchmarks/make_shaped_model.py --config llama-2-7b --layers 8 --tokenizer /tmp/fam -o /tmp/shaped7b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-2-7b", help="built-in shape, config.json or model directory")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers to keep (0: all)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="model spec whose tokenizer is copied")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from spulctl.models import resolve
    from spulctl.plan import read_config, shape_from_config

    raw, where = read_config(args.config)
    shape = shape_from_config(raw, where)
    tok = AutoTokenizer.from_pretrained(resolve(args.tokenizer).path)
    layers = args.layers or shape.layers
    cfg = LlamaConfig(hidden_size=shape.hidden, num_hidden_layers=layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, intermediate_size=shape.ffn,
                      vocab_size=max(shape.vocab, len(tok)), tie_word_embeddings=shape.tied,
                      max_position_embeddings=shape.context, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    info = {"shape_from": where, "layers": layers, "of_layers": shape.layers, "params": n,
            "vocab": cfg.vocab_size, "dtype": args.dtype}
    (args.out / "shaped.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
