"""Package layout: lazy CLI import, kernels namespace, entry points, version, the checkout root."""

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


def test_import_transformers_and_spulctl_in_the_checkout_root():
    """In the checkout root, `import kernels` (transformers imports the PyPI package) gets the PyPI package when it is
    installed, and our folder, inert, when it is not; spulctl.kernels is ours either way."""
    from importlib.metadata import PackageNotFoundError, distribution

    root = Path(__file__).resolve().parents[1]
    try:
        pypi = Path(distribution("kernels").locate_file("kernels/__init__.py")).resolve()
    except PackageNotFoundError:
        pypi = None
    code = ("import transformers, spulctl.kernels, kernels\n"
            "from transformers import PreTrainedModel\n"
            "print(kernels.__file__)\nprint(spulctl.kernels.__file__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    top, ours = (Path(line).resolve() for line in done.stdout.split())
    assert ours == root / "kernels" / "__init__.py"
    assert top == (pypi or ours)


def test_checkout_kernels_folder_is_inert_without_the_pypi_package():
    """Without site-packages (-S), the top-level name finds only our folder: it defines none of the PyPI API."""
    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
            "import kernels\n"
            "try:\n    from kernels import get_kernel\nexcept ImportError as e:\n    print('no hub kernels:', e)\n"
            "print(hasattr(kernels, '__version__'))\n")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.splitlines()
    assert first.startswith("no hub kernels:") and str(root / "kernels") in first, first
    assert second == "False"


def test_version_flag_matches_the_package():
    from spulctl import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"spulctl {__version__}"


def test_python_dash_m_from_the_checkout_root_loads_models(tiny_model_dir: Path, demo_splits: Path):
    """Regression: the checkout root on sys.path made transformers' probe for PyPI `kernels` import our folder."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "spulctl", "eval", str(demo_splits), "--model", str(tiny_model_dir),
                           "--limit", "2"], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test_forget" in done.stdout
