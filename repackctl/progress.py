"""Progress reporting without a UI dependency.

Library functions take a ``ProgressFactory`` and call it for each long job; the CLI passes one
that draws a Rich progress bar on a terminal and :func:`log_progress` elsewhere (SLURM, ``nohup``,
``| tee``): one plain line every ``REPACKCTL_LOG_EVERY_S`` seconds (default 30) and a final line.
Tests pass ``null_progress``. :func:`with_log_file` tees a factory's lines into a run's
``log.txt``.

    with progress("extract", total=n, completed=done, unit="img") as bar:
        bar.advance(batch, loss=0.1)

A plain line reads ``extract 1200/5000 (24%) 35.2 img/s ETA 1m48s loss 0.123``. A task that never
advanced prints no progress line at all (its ``log`` messages are still printed).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

LOG_EVERY_ENV = "REPACKCTL_LOG_EVERY_S"
DEFAULT_LOG_EVERY_S = 30.0
LOG_FILE = "log.txt"  # every line a run logs, beside its metrics.jsonl


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


# --------------------------------------------------------------------------- plain lines


def format_duration(seconds: float) -> str:
    """``48s``, ``1m48s``, ``2h03m``, ``3d04h`` (compact, for ETAs and elapsed times)."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_fields(fields: dict[str, Any]) -> str:
    """``loss 0.123 lr 0.0001`` (floats with 4 significant digits)."""
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
    )


def format_rate(rate: float, unit: str) -> str:
    """``35.2 img/s``, or ``12.3 s/step`` when one unit takes longer than a second."""
    if 0 < rate < 1:
        return f"{1 / rate:.1f} s/{unit}"
    return f"{rate:.1f} {unit}/s"


def progress_line(
    description: str,
    done: int,
    total: int | None,
    rate: float,
    unit: str,
    fields: dict[str, Any],
    *,
    elapsed: float | None = None,
    ended: str = "done",
) -> str:
    """One plain progress line; ``elapsed`` given means the task ended (``done in …``)."""
    parts = [description, f"{done}/{total}" if total else str(done)]
    if total:
        parts.append(f"({100 * done / total:.0f}%)")
    parts.append(format_rate(rate, unit))
    if elapsed is not None:
        parts.append(f"{ended} in {format_duration(elapsed)}")
    elif total and rate > 0 and done < total:
        parts.append(f"ETA {format_duration((total - done) / rate)}")
    if fields:
        parts.append(format_fields(fields))
    return " ".join(p for p in parts if p)


_log_every_s: float | None = None


def set_log_every_s(seconds: float | None) -> None:
    """Set the period of plain progress lines (the CLI passes the resolved ``log_every_s``)."""
    global _log_every_s
    _log_every_s = seconds


def log_every_s() -> float:
    """Seconds between two plain progress lines: the resolved setting, else
    ``REPACKCTL_LOG_EVERY_S``, else 30."""
    if _log_every_s is not None:
        return _log_every_s
    raw = os.environ.get(LOG_EVERY_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_LOG_EVERY_S
    except ValueError:
        return DEFAULT_LOG_EVERY_S
    return value if value >= 0 else DEFAULT_LOG_EVERY_S


class LineBar:
    """A ProgressBar that writes a plain line at most every ``every_s`` seconds (and at the end).

    ``write`` gets one line (no newline); ``clock`` returns seconds (injectable for tests).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        completed: int,
        unit: str,
        write: Callable[[str], None],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.write, self.every_s, self.clock = write, every_s, clock
        self.start_done = self.done = completed
        self.fields: dict[str, Any] = {}
        self.start = self.last = clock()
        self.printed_at_done: int | None = None
        self.last_done = completed

    def rate(self, now: float) -> float:
        """The average rate since the start (the final line's)."""
        return (self.done - self.start_done) / max(now - self.start, 1e-9)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = self.clock()
        if now - self.last >= self.every_s:
            # the rate (and ETA) of the period since the last line: an average since the start
            # hides a slowdown (a GAN term that starts mid-run, a shared machine) for hours
            rate = (self.done - self.last_done) / max(now - self.last, 1e-9)
            self.last, self.last_done = now, self.done
            self.printed_at_done = self.done
            line = progress_line(
                self.description, self.done, self.total, rate, self.unit, self.fields
            )
            self.write(line)

    def log(self, message: str) -> None:
        self.write(message)

    def finish(self, ended: str = "done") -> None:
        """The final line (``done in …`` or ``stopped in …``), unless the task never advanced."""
        if self.done == self.start_done:
            return
        now = self.clock()
        self.write(
            progress_line(
                self.description,
                self.done,
                self.total,
                self.rate(now),
                self.unit,
                self.fields,
                elapsed=now - self.start,
                ended=ended,
            )
        )


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    """``Warning: <message>`` on stderr, from the main process of a job only (``RANK`` 0, or no
    ``RANK``): the one form of a warning that is not a progress bar's log line."""
    if os.environ.get("RANK", "0") == "0":
        _stderr_line(f"Warning: {message}")


def log_progress(
    write: Callable[[str], None] | None = None,
    every_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressFactory:
    """A factory of :class:`LineBar` writing to ``write`` (default: stderr, flushed)."""

    @contextmanager
    def factory(
        description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
    ) -> Iterator[LineBar]:
        bar = LineBar(
            description,
            total,
            completed,
            unit,
            write or _stderr_line,
            log_every_s() if every_s is None else every_s,
            clock,
        )
        try:
            yield bar
        except BaseException:
            bar.finish("stopped")
            raise
        bar.finish()

    return factory


# --------------------------------------------------------------------------- log file


class _FileLines:
    """Appends timestamped lines to a file, creating its folder on the first line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            for part in line.splitlines() or [""]:
                f.write(f"{stamp} {part}\n")


class _TeeBar:
    def __init__(self, inner: ProgressBar, file_bar: LineBar) -> None:
        self.inner, self.file_bar = inner, file_bar

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.inner.advance(n, **fields)
        self.file_bar.advance(n, **fields)

    def log(self, message: str) -> None:
        self.inner.log(message)
        self.file_bar.log(message)


def with_log_file(
    factory: ProgressFactory, path: str | os.PathLike, every_s: float | None = None
) -> ProgressFactory:
    """``factory`` whose bars also write their log messages and plain progress lines to ``path``.

    Lines are appended with a timestamp (a resumed run continues the same file). ``null_progress``
    (library use, non-main processes) is returned unchanged: nothing is written.
    """
    if factory is null_progress:
        return factory
    write = _FileLines(Path(path))

    @contextmanager
    def tee(
        description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
    ) -> Iterator[ProgressBar]:
        period = log_every_s() if every_s is None else every_s
        file_bar = LineBar(description, total, completed, unit, write, period)
        try:
            with factory(description, total=total, completed=completed, unit=unit) as inner:
                yield _TeeBar(inner, file_bar)
        except BaseException as e:
            file_bar.finish("stopped")
            write(f"{description} stopped: {type(e).__name__}: {e}")
            raise
        file_bar.finish()

    return tee
