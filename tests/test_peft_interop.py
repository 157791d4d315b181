"""PEFT interop: a bundle as a PEFT prompt-tuning adapter and back, with the same predictions on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spulctl.data.task import TaskSpec

P = 5
TEXTS = ["A fine film.", "The plot is a mess and the acting is worse.", "Jonah Pellegrino was wonderful in it."]


def _base(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def bundle_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with a random 5-token prompt for the tiny model (no training needed to compare forwards)."""
    import torch

    from spulctl.bundle import save_bundle
    from spulctl.models import fingerprint

    out = tmp_path_factory.mktemp("peft") / "bundle"
    torch.manual_seed(1)
    meta = {"method": "spul", "task": TaskSpec().to_dict(),
            "base_model": {"spec": str(tiny_model_dir), "fingerprint": fingerprint(_base(tiny_model_dir))}}
    save_bundle(out, torch.randn(P, 64), meta)
    return out


def peft_label_scores(model_dir: Path, adapter: Path, texts: list[str]) -> list[dict]:
    """What a PEFT user gets: PeftModel.from_pretrained on a fresh base, template + no special tokens."""
    from spulctl.export.peft_adapter import peft_scores

    tok = _tokenizer(model_dir)
    return peft_scores(_base(model_dir), adapter, tok, TaskSpec(), texts, max_length=500)


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def spulctl_scores(model_dir: Path, bundle: Path, texts: list[str]) -> list[dict]:
    from spulctl.bundle import PromptedClassifier

    return PromptedClassifier(_base(model_dir), bundle, _tokenizer(model_dir)).predict(texts)


def assert_same(ours: list[dict], theirs: list[dict]) -> None:
    for o, t in zip(ours, theirs, strict=True):
        assert max(abs(o["scores"][w] - t[w]) for w in t) <= 1e-4
        assert max(o["scores"], key=o["scores"].get) == max(t, key=t.get)


def test_export_peft_gives_the_same_predictions(tiny_model_dir: Path, bundle_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from spulctl.export.peft_adapter import export_peft_adapter

    out = tmp_path / "adapter"
    info = export_peft_adapter(str(tiny_model_dir), out, bundle=bundle_dir)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["num_virtual_tokens"]) == ("PROMPT_TUNING", "CAUSAL_LM", P)
    assert list(load_file(str(out / "adapter_model.safetensors"))) == ["prompt_embeddings"]
    assert info["check"]["max_abs_score_diff"] <= 1e-4 and (out / "spulctl-task.json").is_file()
    assert_same(spulctl_scores(tiny_model_dir, bundle_dir, TEXTS), peft_label_scores(tiny_model_dir, out, TEXTS))
    from spulctl.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        export_peft_adapter(str(tiny_model_dir), out, bundle=bundle_dir)


def _native_adapter(model_dir: Path, out: Path, config) -> Path:
    """An adapter written by PEFT itself (random init)."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(2)
    get_peft_model(_base(model_dir), config).save_pretrained(str(out))
    return out


def test_import_peft_prompt_tuning_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PromptTuningConfig

    from spulctl.bundle import verify_bundle
    from spulctl.bundle_peft import import_peft_adapter
    from spulctl.export.peft_adapter import export_peft_adapter

    adapter = _native_adapter(tiny_model_dir, tmp_path / "native",
                              PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    meta = import_peft_adapter(adapter, _base(tiny_model_dir), str(tiny_model_dir), tmp_path / "bundle")
    assert verify_bundle(tmp_path / "bundle") == meta and meta["prompt"]["tokens"] == P
    theirs = peft_label_scores(tiny_model_dir, adapter, TEXTS)
    assert_same(spulctl_scores(tiny_model_dir, tmp_path / "bundle", TEXTS), theirs)
    export_peft_adapter(str(tiny_model_dir), tmp_path / "again", bundle=tmp_path / "bundle")  # and out once more
    again = peft_label_scores(tiny_model_dir, tmp_path / "again", TEXTS)
    assert all(abs(a[w] - t[w]) <= 1e-6 for a, t in zip(again, theirs, strict=True) for w in t)


def test_import_refuses_other_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, PrefixTuningConfig
    from safetensors.torch import save_file

    from spulctl.bundle import BundleError
    from spulctl.bundle_peft import import_peft_adapter

    base = _base(tiny_model_dir)
    lora = _native_adapter(tiny_model_dir, tmp_path / "lora", LoraConfig(task_type="CAUSAL_LM", r=2))
    prefix = _native_adapter(tiny_model_dir, tmp_path / "prefix",
                             PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    for adapter, match in ((lora, "LORA is not a prompt-tuning"), (prefix, "PREFIX_TUNING is not a prompt-tuning")):
        with pytest.raises(BundleError, match=match):
            import_peft_adapter(adapter, base, "m", tmp_path / "out")
    encoder = tmp_path / "ptuning"
    encoder.mkdir()
    (encoder / "adapter_config.json").write_text(json.dumps({"peft_type": "P_TUNING", "task_type": "CAUSAL_LM",
                                                             "num_virtual_tokens": P}))
    save_file({"prompt_encoder.mlp_head.0.weight": torch.zeros(4, 4)}, str(encoder / "adapter_model.safetensors"))
    with pytest.raises(BundleError, match="not compiled"):
        import_peft_adapter(encoder, base, "m", tmp_path / "out")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": P}))
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(BundleError, match="pickle"):
        import_peft_adapter(pickled, base, "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_import_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PromptTuningConfig
    from typer.testing import CliRunner

    from spulctl.cli import app

    run = CliRunner().invoke
    adapter = _native_adapter(tiny_model_dir, tmp_path / "native",
                              PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    r = run(app, ["bundle", "import-peft", str(adapter), "--model", str(tiny_model_dir), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert run(app, ["bundle", "verify", str(tmp_path / "b"), "--model", str(tiny_model_dir)]).exit_code == 0
    lora = _native_adapter(tiny_model_dir, tmp_path / "lora", LoraConfig(task_type="CAUSAL_LM", r=2))
    r = run(app, ["bundle", "import-peft", str(lora), "--model", str(tiny_model_dir), "-o", str(tmp_path / "c")])
    lines = [line for line in r.output.strip().splitlines() if "Loading weights" not in line and line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "LORA is not a prompt-tuning adapter" in lines[0], r.output
    assert not (tmp_path / "c").exists()
