"""Fused kernels (Triton) with pure-torch references beside them. Imported as ``spulctl.kernels`` only.

The folder sits at the repository root (``kernels/``) and is mapped into the package by ``pyproject.toml``. The
top-level name ``kernels`` belongs to a PyPI package that transformers and bitsandbytes probe for; if this folder
is ever imported under that name (the repository root on ``sys.path``), refuse, so those probes see "not
installed" instead of our code.
"""

if __name__ == "kernels":
    raise ImportError("this is spulctl's kernels folder (import it as spulctl.kernels), not the PyPI 'kernels' package")
