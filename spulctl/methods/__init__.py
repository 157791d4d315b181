"""Unlearning methods, registered by name. ``get_method("spul")`` returns the class; the CLI never uses if/elif.

Each method module registers itself with :func:`register`; importing this package imports them all (they import
torch lazily, inside their functions).
"""

from __future__ import annotations

from spulctl.errors import SpulError

METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a method available as ``--method name``."""

    def deco(cls: type) -> type:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> type:
    """Look a method up by name.

    Raises:
        SpulError: unknown name (lists the known ones).
    """
    if name not in METHODS:
        raise SpulError(f"--method {name}: unknown method (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


from spulctl.methods import ga, ga_gd, ga_kl, prompt_baselines, release, rl, spul  # noqa: E402,F401  (registration)
