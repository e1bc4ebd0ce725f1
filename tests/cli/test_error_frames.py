"""A command that fails with a reported error frees what its frames held at once.

The CLI's handler reported the error from inside its ``except`` block, which kept the failed
command's frames in a reference cycle until a garbage collection: in one process, an entry's
reader locks held by those frames made the next command find the entry "being read". Each kind
of error the handler reports (ours, a disk error, a lost peer, an interrupt) drops them.
"""

from __future__ import annotations

import errno
import gc
import weakref

import pytest
import typer

from repackctl.cli.common import handle_errors
from repackctl.errors import CacheError


class _Held:
    """Stands for what a command holds open (a reader lock)."""


@pytest.mark.parametrize(
    "error",
    [
        CacheError("refused", "hint"),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("Connection closed by peer"),
        KeyboardInterrupt(),
    ],
    ids=["ours", "disk", "peer", "interrupt"],
)
def test_the_failed_commands_frames_are_freed_without_a_collection(error, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # a lost peer is reported only in a multi-process job
    refs: list[weakref.ref] = []

    @handle_errors
    def command() -> None:
        held = _Held()
        refs.append(weakref.ref(held))
        raise error

    gc.disable()
    try:
        with pytest.raises(typer.Exit):
            command()
        assert refs[0]() is None  # freed when the error was reported, not at a collection
    finally:
        gc.enable()
