"""Write a tiny random Llama (2 layers, hidden 64) and a byte-level BPE tokenizer to a directory.

Used by ``tests/wheel_smoke.sh`` to run the installed ``spulctl`` end to end without any download. The tokenizer is
trained on the built-in demo reviews in the task's template, so label and generic words are short token sequences.

Usage: python tests/wheel_smoke_model.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(out: Path, corpus: list[str] | None = None, initializer_range: float = 0.02) -> None:
    """Train the tokenizer, build the seeded model, save both to ``out``.

    Args:
        corpus: tokenizer training lines (default: the demo reviews in the task template + the answer words).
        initializer_range: the model's weight init scale (the test suite's fixture uses 0.2).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if corpus is None:
        from spulctl.data.demo import demo_records
        from spulctl.data.task import TaskSpec

        spec = TaskSpec()
        corpus = [f"{spec.prompt(r['text'])} {r['label']}" for r in demo_records()] + [" neutral unknown"] * 20
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True, initializer_range=initializer_range)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    build(Path(sys.argv[1]))
