"""The no-training prompt baselines (hard prompt, in-context unlearning) write bundles scored like SPUL's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("method", ["hard_prompt", "icul"])
def test_prompt_baseline_bundles(method: str, tiny_model_dir: Path, demo_splits: Path, tmp_path: Path, frozen):
    import torch

    from spulctl.bundle import PromptedClassifier, load_bundle, verify_bundle
    from spulctl.unlearn import UnlearnConfig, unlearn

    meta = unlearn(UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / method, splits=demo_splits,
                                 method=method, eval_limit=10, retain_limit=50))
    assert meta["training"]["steps"] == 0
    verify_bundle(tmp_path / method)
    bundle = load_bundle(tmp_path / method)
    model, tok = frozen
    text = bundle.meta["prompt_text"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the prompt is exactly the embeddings of the text's tokens
    assert bundle.prompt.shape == (len(ids), 64)
    torch.testing.assert_close(bundle.prompt, model.get_input_embeddings().weight[torch.tensor(ids)].float())
    if method == "hard_prompt":
        assert "Jonah Pellegrino" in text  # the names from split.json
    else:
        assert text.count("### Sentiment:") == 8 and ("unknown\n\n" in text or "neutral\n\n" in text)
    preds = PromptedClassifier(model, bundle, tok).predict(["A fine film."])
    assert set(preds[0]["scores"]) == {"negative", "positive"}
    assert set(meta["metrics"]["after"]) == {"test_retain", "test_forget"}
