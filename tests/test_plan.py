"""``spulctl plan``: the memory estimate against hand computation, its monotonicity and its errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import ModelError
from spulctl.plan import (
    CPU_RUNTIME_MIB,
    HEAP_RETAINED,
    KNOWN_CONFIGS,
    MIB,
    NF4_BYTES,
    PlanSettings,
    estimate,
    read_config,
    shape_from_config,
    trainable_params,
    weight_bytes,
)

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "tie_word_embeddings": True}
SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
           "max_position_embeddings": 8192}


def test_a_tiny_config_matches_hand_computation():
    s = PlanSettings(method="spul", batch_size=4, max_length=10, prompt_tokens=5, retain=7, dtype="float32",
                     device="cpu")
    got = {k: v * MIB for k, v in estimate(shape_from_config(TINY), s)["components"].items()}
    # linear layers: q 64·64, k and v 64·32, o 64·64, gate/up/down 64·128 each; two layers
    linear = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)
    other = 100 * 64 + 2 * 2 * 64 + 64  # tied embedding, two norms a layer, the final norm
    assert got["weights"] == pytest.approx(4 * (linear + other))
    per_token = (4 * 64 + 3 * 128 + 2 * 32 + 33 * 4 + 20) * 2 * 4  # saved numbers · layers · fp32
    assert got["activations"] == pytest.approx(4 * 10 * per_token + 5 * per_token + 4 * 100 * 4 * 3)
    assert got["reference"] == pytest.approx(7 * 64 * 4)
    assert got["trainable"] == got["gradients"] == pytest.approx(5 * 64 * 4)
    assert got["optimizer"] == pytest.approx(2 * 5 * 64 * 4)
    assert got["runtime"] == pytest.approx(CPU_RUNTIME_MIB * MIB + 2 * 100 * 64 * 4)


def test_the_heap_term_is_cpu_only_and_outside_the_live_total():
    shape = shape_from_config(SMOLLM2)
    cpu = estimate(shape, PlanSettings(method="ga", batch_size=16, micro_batch=4, max_length=40, device="cpu"))
    assert cpu["total_mib"] == pytest.approx(sum(cpu["components"].values()))  # live memory only
    assert cpu["heap_mib"] == pytest.approx(HEAP_RETAINED * cpu["components"]["activations"])  # one slice's
    assert cpu["peak_rss_mib"] == pytest.approx(cpu["total_mib"] + cpu["heap_mib"])
    gpu = estimate(shape, PlanSettings(method="ga", batch_size=16, micro_batch=4, max_length=40, device="cuda"))
    assert gpu["heap_mib"] == 0 and gpu["peak_rss_mib"] is None


def test_ranks_split_the_batch_and_fsdp_shards_the_layers():
    shape = shape_from_config(KNOWN_CONFIGS["llama-2-70b"])
    one = PlanSettings(batch_size=16, max_length=128)
    dp = PlanSettings(batch_size=16, max_length=128, processes=8)
    fsdp = PlanSettings(batch_size=16, max_length=128, processes=8, fsdp=True)
    assert (one.slice, dp.slice, PlanSettings(batch_size=16, processes=3).slice) == (16, 2, 6)
    e1, e8, ef = (estimate(shape, s) for s in (one, dp, fsdp))
    assert e8["components"]["weights"] == e1["components"]["weights"]  # data parallelism replicates the base
    assert e8["components"]["activations"] < e1["components"]["activations"]
    linear = shape.linear_params() * 2  # bf16 on CUDA
    expected = linear / 8 + 2 * linear / shape.layers + shape.other_params() * 2
    assert ef["components"]["weights"] * MIB == pytest.approx(expected)
    assert ef["components"]["activations"] == e8["components"]["activations"]
    assert ef["total_mib"] < e1["total_mib"] / 4  # 70B: what makes one GPU enough


def test_parameter_counts_match_the_real_models():
    smol = shape_from_config(SMOLLM2)
    assert smol.n_params() == 134_515_008  # sum(p.numel()) of the loaded SmolLM2-135M
    # what `spulctl unlearn --method ga` reports as trainable on SmolLM2 (LoRA r=16 on every linear layer)
    assert trainable_params(smol, PlanSettings(method="ga")) == 4_884_480
    assert trainable_params(smol, PlanSettings(method="spul", prompt_tokens=30)) == 17_280
    assert shape_from_config(KNOWN_CONFIGS["llama-2-7b"]).n_params() == 6_738_415_616
    assert shape_from_config(KNOWN_CONFIGS["llama-2-13b"]).n_params() == 13_015_864_320
    assert shape_from_config(KNOWN_CONFIGS["llama-2-70b"]).n_params() == 68_976_648_192


@pytest.mark.parametrize("method", ["spul", "ga"])
def test_more_micro_batching_never_raises_the_activations(method: str):
    shape = shape_from_config(KNOWN_CONFIGS["llama-2-7b"])
    acts = [estimate(shape, PlanSettings(method=method, batch_size=32, micro_batch=mb))["components"]["activations"]
            for mb in (0, 64, 32, 16, 8, 3, 2, 1)]
    assert all(a >= b for a, b in itertools.pairwise(acts)), acts
    assert acts[-1] < acts[0] / 16
    whole = estimate(shape, PlanSettings(method=method, batch_size=32, micro_batch=8))
    assert whole["activations_whole_batch_mib"] == pytest.approx(acts[0])


def test_4bit_weights_are_a_quarter_of_bf16_plus_the_scales():
    shape = shape_from_config(KNOWN_CONFIGS["llama-2-13b"])
    other = shape.other_params() * 2  # embeddings, head and norms stay bf16
    bf16 = weight_bytes(shape, PlanSettings(dtype="bfloat16")) - other
    nf4 = weight_bytes(shape, PlanSettings(dtype="bfloat16", quantization="4bit")) - other
    int8 = weight_bytes(shape, PlanSettings(dtype="bfloat16", quantization="8bit")) - other
    assert nf4 / bf16 == pytest.approx(NF4_BYTES / 2)
    assert 0.25 < nf4 / bf16 < 0.25 * 1.04  # the overhead: 8-bit absmax per 64 weights + fp32 per 256 blocks
    assert 0.5 < int8 / bf16 < 0.5 * 1.01  # an fp32 scale per output row


def test_read_config_accepts_a_bare_config_json_and_a_directory(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert read_config(str(tmp_path / "config.json"))[0]["hidden_size"] == 64
    assert read_config(str(tmp_path))[0]["num_hidden_layers"] == 2
    assert read_config("llama-2-70b")[0]["num_key_value_heads"] == 8
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_config(str(tmp_path / "bad.json"))
    (tmp_path / "vision.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelError, match="not a decoder config"):
        shape_from_config(read_config(str(tmp_path / "vision.json"))[0], "vision.json")


def test_cli_prints_a_table_and_json(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--model", str(tmp_path), "--batch-size", "8", "--micro-batch", "2"])
    assert res.exit_code == 0, res.output
    assert "activations" in res.output and "whole batch" in res.output
    res = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--load-in-4bit", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["settings"]["quantization"] == "4bit" and out["total_mib"] > out["components"]["weights"] > 3000


@pytest.mark.parametrize("args", [
    ["--model", "no-such/model-anywhere"],
    ["--model", "/no/such/config.json"],
    ["--model", "llama-2-7b", "--load-in-4bit", "--load-in-8bit"],
    ["--model", "llama-2-7b", "--method", "nope"],
    ["--model", "llama-2-7b", "--batch-size", "0"],
    ["--model", "llama-2-7b", "--processes", "0"],
    ["--model", "llama-2-7b", "--method", "ga", "--processes", "2", "--fsdp"],
    ["--model", "llama-2-7b", "--fsdp"],
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["plan", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output
