"""spulctl: make a frozen LLM forget part of its training data with soft prompts (SPUL).

Python API (heavy modules load on first use)::

    from spulctl import load_bundle, PromptedClassifier
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["PromptedClassifier", "__version__", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name in ("load_bundle", "PromptedClassifier"):
        from spulctl import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'spulctl' has no attribute {name!r}")
