"""Progress reporting without a UI dependency.

Library functions take a ``ProgressFactory`` and call it for each long job; the CLI passes one
that draws a Rich progress bar (rate, ETA), tests pass ``null_progress``.

    with progress("extract", total=n, completed=done) as bar:
        bar.advance(batch, loss=0.1)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol


class ProgressBar(Protocol):
    """One running task."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Mark ``n`` more units done; ``fields`` (loss, img/s, …) are shown beside the bar."""

    def log(self, message: str) -> None:
        """Print a line above the bar (warnings, resume notices)."""


ProgressFactory = Callable[..., AbstractContextManager[ProgressBar]]


class _NullBar:
    def __init__(self) -> None:
        self.done = 0
        self.messages: list[str] = []

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n

    def log(self, message: str) -> None:
        self.messages.append(message)

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def null_progress(
    description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
) -> AbstractContextManager[ProgressBar]:
    """A progress factory that shows nothing (tests, library use)."""
    bar = _NullBar()
    bar.done = completed
    return bar
