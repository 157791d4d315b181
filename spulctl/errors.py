"""User-facing errors.

Every error a user can cause is a :class:`SpulError`: the CLI prints its message on one line and exits
with :attr:`SpulError.exit_code` (2 for bad input), never with a traceback.
"""

from __future__ import annotations


class SpulError(Exception):
    """A problem the user can fix: bad input, missing file, refused overwrite.

    Args:
        message: one line that names the file, field and value at fault.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\n", " "))


class DataError(SpulError):
    """A dataset file or record is malformed (missing column, empty text, unknown label, ...)."""


class ModelError(SpulError):
    """A model spec cannot be resolved or loaded."""


class OutputExistsError(SpulError):
    """An output already exists and ``--overwrite`` was not given."""


class MissingDependencyError(SpulError):
    """An optional dependency is not installed; the message carries the install hint."""
