"""Fused kernels (Triton) with pure-torch references beside them. Imported as ``spulctl.kernels``.

The folder sits at the repository root (``kernels/``) and is mapped into the package by ``pyproject.toml``
(``[tool.setuptools.package-dir]``). The top-level name ``kernels`` belongs to a PyPI package that transformers and
bitsandbytes probe for. When a source checkout's root is on ``sys.path`` (``python -m ...`` or ``python -c`` run in
the checkout), that probe finds this folder under the top-level name. Imported that way it stays inert: it defines
no version and none of the PyPI package's API, so transformers' ``is_kernels_available()`` answers False (no
version) and any ``from kernels import get_kernel`` fails with an ImportError, which is what callers of an optional
package already handle. Nothing here imports the kernel modules, so the probe costs nothing.
"""

if __name__ == "kernels":  # the top-level name: not the PyPI package, say so to anyone who asks for its API

    def __getattr__(name: str) -> object:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}: this is spulctl's kernels folder "
                             "(import it as spulctl.kernels), not the PyPI 'kernels' package")
