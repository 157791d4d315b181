"""Keep a source checkout's root off ``sys.path`` (see :func:`drop_checkout_root`)."""

import sys
from pathlib import Path


def drop_checkout_root() -> None:
    """Take the repository root off ``sys.path`` when running from a source checkout.

    ``python -m spulctl`` or ``python -m pytest`` run from the repository root put that root first on ``sys.path``,
    where our ``kernels/`` folder would shadow the PyPI ``kernels`` package that transformers probes for (and our
    folder refuses to import under that name). ``spulctl`` is installed (editable or not), so the root is not needed.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "kernels" / "__init__.py").is_file():
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
