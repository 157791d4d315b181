"""Shared fixtures: a tiny random Llama (2 layers, hidden 64) with a BPE tokenizer trained on the demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run under the CPU interpreter unless a run asks for compiled kernels (TRITON_INTERPRET=0 on a GPU);
# set before any test imports triton, whichever test file runs first
os.environ.setdefault("TRITON_INTERPRET", "1")



def _corpus() -> list[str]:
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec

    spec = TaskSpec()
    lines = [spec.prompt(r["text"]) + " " + r["label"] for r in demo_records()]
    return lines + [" neutral unknown positive negative"] * 50


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny LlamaForCausalLM + fast BPE tokenizer (vocab ~600), seeded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def frozen(tiny_model_dir: Path):
    """The tiny model loaded in eval mode with every weight frozen, and its tokenizer (one copy per test module)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def mixed_examples(frozen):
    """7 encoded demo records for the tiny tokenizer: 3 forget rows (generic targets) first, then 4 retain rows."""
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode, label_vocab

    tok = frozen[1]
    spec = TaskSpec()
    vocab = label_vocab(spec, tok)
    records = demo_records(7)
    targets = [vocab.generic_ids[i % 2] if i < 3 else vocab.label_ids[spec.label_words.index(r["label"])]
               for i, r in enumerate(records)]
    return encode(records, spec, tok, vocab, targets=targets)


@pytest.fixture(scope="session")
def demo_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Entity splits of the demo dataset, written as the split command writes them."""
    from spulctl.pipeline import run_split

    out = tmp_path_factory.mktemp("splits") / "demo"
    run_split("demo", out, by="entity", entities=["Jonah Pellegrino", "Priya Raman", "Lucia Ferrante"])
    return out
