"""Package layout: lazy CLI import, kernels namespace, entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from spulctl.cli import app


def test_cli_import_does_not_import_torch():
    code = "import sys, spulctl.cli; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_kernels_import_as_spulctl_kernels_not_top_level(tmp_path: Path):
    code = ("import importlib.util, spulctl.kernels as k; print(k.__name__); "
            "s = importlib.util.find_spec('kernels'); "
            "print('ours' if s is not None and s.origin and 'spulctl' in open(s.origin).read() else 'none')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    name, top = done.stdout.split()
    assert name == "spulctl.kernels"
    assert top == "none"


def test_python_dash_m_shows_help():
    done = subprocess.run([sys.executable, "-m", "spulctl", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("split", "familiarize", "models"):
        assert command in done.stdout


def test_models_list_names_builtin_aliases():
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for alias in ("smollm2-135m", "llama-2-7b", "opt-1.3b"):
        assert alias in result.output


def test_every_command_has_working_help():
    runner = CliRunner()
    for args in (["split"], ["familiarize"], ["models", "list"], ["models", "pull"], ["models", "info"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_repo_root_kernels_folder_refuses_the_top_level_name():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, text=True, cwd=root)
    assert done.returncode != 0
    assert "import it as spulctl.kernels" in done.stderr


def test_python_dash_m_from_the_checkout_root_loads_models(tiny_model_dir: Path, demo_splits: Path):
    """Regression: the checkout root on sys.path made transformers' probe for PyPI `kernels` import our folder."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "spulctl", "eval", str(demo_splits), "--model", str(tiny_model_dir),
                           "--limit", "2"], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test_forget" in done.stdout
