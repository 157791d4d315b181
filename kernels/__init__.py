"""Fused kernels (Triton) with pure-torch references beside them. Imported as ``spulctl.kernels``.

The folder sits at the repository root (``kernels/``) and is mapped into the package by ``pyproject.toml``
(``[tool.setuptools.package-dir]``). The top-level name ``kernels`` belongs to a PyPI package that transformers
depends on and imports. When a source checkout's root is on ``sys.path`` (``python -m ...`` or ``python -c`` run in
the checkout), ``import kernels`` finds this folder first. Imported under that name it hands over to the PyPI
package where one is installed (the rest of ``sys.path`` is searched without the checkout root and the module
found there replaces this one in ``sys.modules``), and otherwise stays inert: no version and none of that
package's API, so ``from kernels import get_kernel`` fails with the ImportError that callers of an optional package
already handle. Nothing here imports the kernel modules, so either path costs nothing.
"""

if __name__ == "kernels":  # the top-level name: hand over to the PyPI package, or say what this folder is
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder
    from importlib.util import module_from_spec as _module_from_spec
    from pathlib import Path as _Path

    _root = _Path(__file__).resolve().parent.parent
    _spec = _PathFinder.find_spec(__name__, [p for p in _sys.path if _Path(p or ".").resolve() != _root])
    if _spec is not None and _spec.loader is not None:
        _real = _module_from_spec(_spec)
        _sys.modules[__name__] = _real  # what `import kernels` returns once this module has run
        _spec.loader.exec_module(_real)
    else:

        def __getattr__(name: str) -> object:
            raise AttributeError(f"module 'kernels' has no attribute {name!r}: this is spulctl's kernels folder "
                                 "(import it as spulctl.kernels), not the PyPI 'kernels' package")
