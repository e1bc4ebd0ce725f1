"""User-facing errors: every one carries a message and a hint (usually the next command to run).

The CLI prints ``Error: <message>`` / ``Hint: <hint>`` to stderr and exits with ``exit_code``;
no traceback unless ``REPACKCTL_DEBUG=1``. Library code raises these, never calls ``sys.exit``.
"""

from __future__ import annotations

from collections.abc import Sequence


def name_items(items: Sequence[object], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` items of a message's list and how many others."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class RepackError(Exception):
    """Base class of every error a user can cause and fix."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(RepackError):
    """A setting, flag or config file is invalid."""

    exit_code = 2


class ResumeConflict(ConfigError):
    """Resuming a run would change a setting that breaks exact continuation."""


class RegistryError(RepackError):
    """A plugin id is unknown, duplicated or fails to load."""

    exit_code = 3


class DataError(RepackError):
    """Input data is missing or unreadable."""

    exit_code = 4


class WeightsError(RepackError):
    """Model weights are missing, unsafe or do not fit the architecture."""

    exit_code = 5


class CacheError(RepackError):
    """A cache entry is missing, incomplete, or was made with another spec."""

    exit_code = 6


class CheckpointError(RepackError):
    """A run or checkpoint is missing, incomplete or incompatible."""

    exit_code = 7


class TrainingError(RepackError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""

    exit_code = 8
