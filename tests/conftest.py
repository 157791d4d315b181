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
    """A saved tiny LlamaForCausalLM + fast BPE tokenizer (vocab ~600), seeded (built by the wheel smoke's
    builder, which runs outside the test suite too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wheel_smoke_model", Path(__file__).with_name("wheel_smoke_model.py"))
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = tmp_path_factory.mktemp("tiny-llama")
    builder.build(out, _corpus(), initializer_range=0.2)
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


@pytest.fixture(scope="session")
def small_bundle(tiny_model_dir: Path, demo_splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A p=4 SPUL bundle for the tiny model on the demo splits (two steps): a subject for eval-side tests."""
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig, unlearn

    out = tmp_path_factory.mktemp("small-bundle") / "bundle"
    unlearn(UnlearnConfig(model=str(tiny_model_dir), out=out, splits=demo_splits, prompt_tokens=4, eval_limit=0,
                          retain_limit=60, train=TrainConfig(lr=1e-2, epochs=1, batch_size=16, max_steps=2)))
    return out


CHAT = ("{% for m in messages %}<eos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template in its tokenizer (what ``reveal`` prompts)."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT
    tok.save_pretrained(out)
    return out
