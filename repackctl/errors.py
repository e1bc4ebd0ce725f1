"""User-facing errors: every one carries a message and a hint (usually the next command to run).

The CLI prints ``Error: <message>`` / ``Hint: <hint>`` to stderr and exits with ``exit_code``;
no traceback unless ``REPACKCTL_DEBUG=1``. Library code raises these, never calls ``sys.exit``.

Exit codes, one per kind of failure (a script can tell them apart):

====  =======================================================================================
0     done
1     any other :class:`RepackError` (a full disk, a killed worker, a lost peer process …)
2     :class:`ConfigError`: a setting, flag or config file (also a command line that does not
      parse)
3     :class:`RegistryError`: a plugin id
4     :class:`DataError`: input data missing or unreadable
5     :class:`WeightsError`: model weights
6     :class:`CacheError`: a cache entry
7     :class:`CheckpointError`: a run or checkpoint
8     :class:`TrainingError`: training cannot go on
9     :class:`OutOfMemory`: an allocation failed (memory or GPU memory ran out)
130   interrupted (Ctrl-C)
143   stopped by SIGTERM (128 + 15)
====  =======================================================================================
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence


def name_items(items: Sequence[object], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` items of a message's list and how many others."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_at_least(flags: Sequence[tuple[str, int | None, int]]) -> None:
    """Refuse the first ``(flag, value, least)`` whose value is below its least (None: not
    given), naming the flag: a script's counts (steps, batch, repeats) checked before any work."""
    for flag, value, least in flags:
        if value is not None and value < least:
            raise ConfigError(f"{flag} {value} is below {least}", f"give {flag} {least} or more")


def debug_requested() -> bool:
    """``REPACKCTL_DEBUG`` is set (not empty, 0 or false): errors keep their traceback."""
    return os.environ.get("REPACKCTL_DEBUG", "") not in {"", "0", "false"}


def script_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """The ``main`` of a script under ``benchmarks/`` or ``scripts/``: a :class:`RepackError`
    becomes ``Error:`` / ``Hint:`` on stderr and the error's exit code, as in the CLI (with
    ``REPACKCTL_DEBUG=1`` it is raised, traceback and all); ``None`` returned means 0."""

    @functools.wraps(main)
    def wrapped(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs) or 0
        except RepackError as e:
            if debug_requested():
                raise
            print(f"Error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"Hint: {e.hint}", file=sys.stderr)
            return e.exit_code

    return wrapped


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


class OutOfMemory(RepackError):
    """Memory (or a GPU's memory) ran out: a size the settings accept (a batch, a model's
    widths) needs more than the machine has. The CLI turns numpy's, torch's and Python's
    allocation failures into this (``cli.common.memory_error``) instead of their traceback."""

    exit_code = 9
