"""Quantized frozen bases (bitsandbytes NF4 / int8, its CPU path): loading, SPUL on top, and the bundle's check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import ModelError
from spulctl.quantization import quantization_name

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")


def _quantized_tiny(tiny_model_dir: Path, kind: str):
    from spulctl.models import load_model

    try:
        return load_model(str(tiny_model_dir), device="cpu", dtype="float32", quantization=kind)
    except (RuntimeError, NotImplementedError, AssertionError) as exc:  # a bitsandbytes build without the CPU path
        pytest.skip(f"bitsandbytes cannot {kind}-quantize on this CPU: {type(exc).__name__}: {exc}")


def test_the_flags_name_one_quantization():
    assert quantization_name() == "none"
    assert quantization_name(load_in_4bit=True) == "4bit"
    assert quantization_name(load_in_8bit=True) == "8bit"
    with pytest.raises(ModelError, match="choose one"):
        quantization_name(True, True)


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_tiny_model_loads_quantized_on_cpu_and_scores(tiny_model_dir: Path, kind: str):
    import torch

    from spulctl.models import load_model
    from spulctl.quantization import quantization_of

    model, tok = _quantized_tiny(tiny_model_dir, kind)
    plain, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert quantization_of(model) == kind and quantization_of(plain) == "none"
    ids = tok(["a fine film", "a dull film"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        q, f = model(**ids).logits, plain(**ids).logits
    assert torch.isfinite(q).all()
    assert (q - f).abs().max() < 0.5 * f.abs().max()  # close to the fp32 model, not equal


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_the_gradient_reaches_the_input_after_an_inference_pass(tiny_model_dir: Path, kind: str):
    """bitsandbytes' CPU path repacks 4-bit weights on an eval-mode forward without gradients and then multiplies
    outside autograd; load_model switches that off, so a prompt behind the layers still gets its gradient."""
    import torch

    from spulctl.models import load_model

    model, tok = _quantized_tiny(tiny_model_dir, kind)
    plain, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    ids = tok(["a fine film"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        model(input_ids=ids)  # the first, gradient-free pass (the cached reference, the "before" report)
    grads = []
    for m in (model, plain):
        emb = m.get_input_embeddings()(ids).detach().float().requires_grad_(True)
        m(inputs_embeds=emb).logits[0, -1].log_softmax(-1)[:8].sum().backward()
        grads.append(emb.grad.flatten())
    assert grads[0].abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.8


def _unlearn(tiny_model_dir: Path, demo_splits: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits), "-o",
                                    str(out), "-p", "4", "--max-steps", "2", "--eval-limit", "0", "--retain-limit",
                                    "20", "--no-report-before", "--no-select", "--prompt-init", "random", *extra])


def test_spul_on_a_4bit_base_records_it_and_refuses_a_full_precision_base(tiny_model_dir: Path, demo_splits: Path,
                                                                          tmp_path: Path):
    _quantized_tiny(tiny_model_dir, "4bit")  # skips where bitsandbytes has no CPU path
    res = _unlearn(tiny_model_dir, demo_splits, tmp_path / "b4", "--load-in-4bit")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "b4" / "bundle.json").read_text())
    assert meta["base_model"]["quantization"] == "4bit"
    runner = CliRunner()
    ok = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b4"), "--model", str(tiny_model_dir),
                             "--load-in-4bit"])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b4"), "--model", str(tiny_model_dir)])
    assert refused.exit_code == 2 and "quantization mismatch" in refused.output, refused.output
    assert "4-bit NF4" in refused.output and "--load-in-4bit" in refused.output
    forced = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b4"), "--model", str(tiny_model_dir),
                                 "--ignore-fingerprint"])
    assert forced.exit_code == 0, forced.output
    scored = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle",
                                 str(tmp_path / "b4"), "--load-in-4bit", "--limit", "4"])
    assert scored.exit_code == 0, scored.output


def test_a_full_precision_bundle_is_refused_on_a_quantized_base(tiny_model_dir: Path, demo_splits: Path,
                                                                tmp_path: Path):
    from spulctl.bundle import BundleError, check_fingerprint, load_bundle

    res = _unlearn(tiny_model_dir, demo_splits, tmp_path / "b32")
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "b32")
    assert bundle.meta["base_model"]["quantization"] == "none"
    model, _ = _quantized_tiny(tiny_model_dir, "8bit")
    with pytest.raises(BundleError, match="quantization mismatch: trained on a not quantized base, this base is "
                                          "8-bit int8"):
        check_fingerprint(bundle, model)
    del bundle.meta["base_model"]["quantization"]  # bundles from before the field: a full-precision base
    with pytest.raises(BundleError, match="quantization mismatch"):
        check_fingerprint(bundle, model)


@pytest.mark.parametrize("args", [
    ["unlearn", "-o", "OUT", "--load-in-4bit", "--load-in-8bit"],
    ["unlearn", "-o", "OUT", "--method", "ga", "--load-in-4bit"],
    ["eval", "SPLITS", "--load-in-8bit", "--backend", "onnx"],
])
def test_bad_quantization_requests_are_one_line_exit_2(args: list[str], tiny_model_dir: Path, demo_splits: Path,
                                                       tmp_path: Path):
    args = [str(tmp_path / "o") if a == "OUT" else str(demo_splits) if a == "SPLITS" else a for a in args]
    extra = ["--splits", str(demo_splits)] if args[0] == "unlearn" else []
    res = CliRunner().invoke(app, [*args, "--model", str(tiny_model_dir), *extra])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert [line.startswith("error:") for line in res.output.splitlines()].count(True) == 1, res.output


@pytest.mark.slow
def test_smollm2_4bit_on_cpu_matches_fp32_predictions():
    import torch

    from spulctl.models import load_model
    from spulctl.quantization import quantization_of

    model, tok = load_model("smollm2-135m", device="cpu", quantization="4bit")
    plain, _ = load_model("smollm2-135m", device="cpu", dtype="float32")
    assert quantization_of(model) == "4bit"
    ids = tok(["The film was a delight from start to finish. Sentiment:"], return_tensors="pt")
    with torch.inference_mode():
        q, f = model(**ids).logits[0, -1], plain(**ids).logits[0, -1]
    assert torch.isfinite(q).all()
    assert len(set(q.topk(5).indices.tolist()) & set(f.topk(5).indices.tolist())) >= 3
