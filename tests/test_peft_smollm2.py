"""Slow: PEFT interop on the real SmolLM2-135M (bundle -> PEFT adapter -> same predictions, and back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spulctl.data.task import TaskSpec
from spulctl.errors import ModelError

pytestmark = pytest.mark.slow
TEXTS = ["A fine film.", "The plot is a mess and the acting is worse.", "Jonah Pellegrino was wonderful in it."]


@pytest.fixture(scope="module")
def smollm2_dir() -> str:
    from spulctl.models import pull

    try:
        return str(pull("smollm2-135m"))
    except ModelError as exc:
        pytest.skip(f"cannot pull smollm2-135m: {exc}")


def _load(spec: str):
    from spulctl.models import load_model

    return load_model(spec, device="cpu", dtype="float32")


def test_peft_round_trip_on_smollm2(smollm2_dir: str, tmp_path: Path) -> None:
    import torch

    from spulctl.bundle import PromptedClassifier, save_bundle
    from spulctl.bundle_peft import import_peft_adapter
    from spulctl.export.peft_adapter import export_peft_adapter, peft_scores
    from spulctl.models import fingerprint

    model, tok = _load(smollm2_dir)
    torch.manual_seed(0)
    rows = torch.randint(0, model.config.vocab_size, (8,))
    prompt = model.get_input_embeddings().weight[rows].detach().clone()  # (8, d) vocabulary vectors, as --prompt-init
    meta = {"method": "spul", "task": TaskSpec().to_dict(),
            "base_model": {"spec": smollm2_dir, "fingerprint": fingerprint(model)}}
    save_bundle(tmp_path / "bundle", prompt, meta)
    info = export_peft_adapter(smollm2_dir, tmp_path / "adapter", bundle=tmp_path / "bundle")
    assert info["check"]["max_abs_score_diff"] <= 1e-4
    ours = PromptedClassifier(model, tmp_path / "bundle", tok).predict(TEXTS)
    fresh, _ = _load(smollm2_dir)
    theirs = peft_scores(fresh, tmp_path / "adapter", tok, TaskSpec(), TEXTS, max_length=info["max_length"])
    for o, t in zip(ours, theirs, strict=True):
        assert max(abs(o["scores"][w] - t[w]) for w in t) <= 1e-4
        assert max(o["scores"], key=o["scores"].get) == max(t, key=t.get)
    back = import_peft_adapter(tmp_path / "adapter", model, smollm2_dir, tmp_path / "back")
    assert back["base_model"]["fingerprint"] == meta["base_model"]["fingerprint"]
    again = PromptedClassifier(model, tmp_path / "back", tok).predict(TEXTS)
    assert all(a["scores"] == o["scores"] for a, o in zip(again, ours, strict=True))
