"""Task formatting and the answer-only forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spulctl.data.task import TaskSpec, encode, label_vocab
from spulctl.errors import DataError
from spulctl.step import answer_logits, bucketed_batches, collate, target_ce


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_encode_marks_answer_position_and_label_tokens(tiny):
    _, tok = tiny
    spec = TaskSpec()
    ex = encode([{"text": "A fine film.", "label": "positive"}], spec, tok)[0]
    prompt_ids = tok(spec.prompt("A fine film."), add_special_tokens=False)["input_ids"]
    label_ids = tok(" positive", add_special_tokens=False)["input_ids"]
    assert ex.input_ids == prompt_ids + label_ids
    assert ex.answer_pos == len(prompt_ids) - 1
    assert ex.target_ids == label_ids and ex.label == 1


def test_multi_token_label_words_are_supported(tiny):
    _, tok = tiny
    spec = TaskSpec(label_words=("thumbs down", "thumbs upward"), generic_labels=("unsure",))
    with pytest.raises(DataError, match="share their first token"):
        label_vocab(spec, tok)
    spec = TaskSpec(label_words=("dreadful", "splendid"), generic_labels=("unsure",))
    vocab = label_vocab(spec, tok)
    assert all(len(ids) >= 2 for ids in vocab.label_ids), vocab.label_ids
    ex = encode([{"text": "x", "label": "splendid"}], spec, tok, vocab)[0]
    assert ex.input_ids[-len(ex.target_ids):] == vocab.label_ids[1]


def test_unknown_label_word_is_an_error(tiny):
    _, tok = tiny
    with pytest.raises(DataError, match="not a label word"):
        encode([{"text": "x", "label": "meh"}], TaskSpec(), tok)


def test_template_needs_placeholder():
    with pytest.raises(DataError, match=r"\{text\}"):
        TaskSpec(template="no placeholder")


def test_answer_logits_equal_full_logits_at_answer_positions(tiny):
    model, tok = tiny
    spec = TaskSpec(label_words=("dreadful", "splendid"), generic_labels=("unsure",))
    records = [{"text": "A fine film with a very long tail of words.", "label": "splendid"},
               {"text": "Dull.", "label": "dreadful"}]
    batch = collate(encode(records, spec, tok), tok.pad_token_id)
    with torch.no_grad():
        fast = answer_logits(model, batch)  # (b, k, V)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (b, t, V)
    ref = full.gather(1, batch.positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(fast, ref.float(), rtol=1e-5, atol=1e-5)
    ce = target_ce(fast, batch.targets)
    manual = torch.stack([torch.nn.functional.cross_entropy(ref[i][batch.targets[i] != -100],
                                                            batch.targets[i][batch.targets[i] != -100])
                          for i in range(2)]).mean()
    torch.testing.assert_close(ce, manual)


def test_bucketed_batches_cover_everything_once_and_are_seeded():
    lengths = [5, 50, 7, 48, 6, 49, 8, 47, 9, 46, 10, 45]
    a = bucketed_batches(lengths, 3, seed=1, pool=10)
    assert sorted(i for b in a for i in b) == list(range(12))
    assert a == bucketed_batches(lengths, 3, seed=1, pool=10)
    assert a != bucketed_batches(lengths, 3, seed=2, pool=10)
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bucketed_batches(lengths, 3, None)]
    assert max(spans) <= 2  # similar lengths together
