"""An allocation that fails (a size the settings accept: `pack train --ch 1000000`, `--batch-size
1000000`) is one `Error:` naming the memory that ran out, with a `Hint:` to lower the sizes
given, and its own exit code: torch's and numpy's allocation tracebacks were printed instead
(audit C of session 37, finding 4). Only memory errors: any other exception keeps its
traceback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import typer
from support.caches import patchpix_cache
from support.cli import cli_refused
from typer.testing import CliRunner

from repackctl.cli.common import handle_errors
from repackctl.errors import OutOfMemory, RepackError

runner = CliRunner()


def _app(action: Callable[[], object]) -> typer.Typer:
    """A one-command app that runs ``action`` under the CLI's error handling."""
    app = typer.Typer()

    @app.command()
    @handle_errors
    def go(batch_size: int = typer.Option(None, "--batch-size")) -> None:
        action()

    return app


def _cuda_oom() -> None:  # what torch raises on a GPU (no GPU needed to raise it)
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
        "79.11 GiB of which 1.02 GiB is free."
    )


@pytest.mark.parametrize(
    ("action", "told"),
    [
        (lambda: np.empty(1 << 62, np.uint8), "ran out of memory: it asked for 4.00 EiB"),
        (lambda: torch.empty(1 << 50, dtype=torch.uint8), "ran out of memory: it asked for 1 PiB"),
        (_cuda_oom, "ran out of GPU memory: it asked for 20.00 GiB"),
        (lambda: bytearray(1 << 62), "ran out of memory (MemoryError)"),
    ],
    ids=["numpy", "torch-cpu", "cuda", "python"],
)
def test_allocation_failures_are_one_error_line(action, told):
    """Real allocations that fail at once (numpy's _ArrayMemoryError, torch's RuntimeError
    `can't allocate memory`, Python's MemoryError) and torch's CUDA OutOfMemoryError."""
    res = runner.invoke(_app(action), ["--batch-size", "1000000"])
    out = " ".join(res.output.split())
    assert res.exit_code == OutOfMemory.exit_code == 9, res.output
    assert "Traceback" not in out and out.count("Error:") == 1, out
    assert f"Error: {told}" in out, out
    assert "Hint: lower the sizes given (--batch-size 1000000)" in out, out
    gpu = "GPU" in told
    assert ("use a GPU with more memory" in out) == gpu and ("free memory" in out) != gpu, out


def test_only_memory_errors_are_told_with_their_own_exit_code():
    """Its exit code is no other error's; and not broader than memory: a RuntimeError that is
    a bug keeps its traceback, the same command's allocation failure does not."""
    codes = [c.exit_code for c in RepackError.__subclasses__() if c is not OutOfMemory]
    assert OutOfMemory.exit_code not in [RepackError.exit_code, *codes]

    def bug() -> None:
        raise RuntimeError("element 0 of tensors does not require grad")

    res = runner.invoke(_app(bug), [])
    assert isinstance(res.exception, RuntimeError), res.output
    assert "Error:" not in res.output, res.output
    res = runner.invoke(_app(lambda: torch.empty(1 << 50, dtype=torch.uint8)), [])
    assert res.exit_code == OutOfMemory.exit_code and res.exception is not None, res.output
    hint = " ".join(res.output.split("Hint:")[1].split())
    assert hint.startswith("lower the batch size (--batch-size) or the model's widths"), hint


def test_pack_train_with_a_huge_width_is_refused(tmp_path, monkeypatch):
    """The audit's `pack train --ch 1000000`: torch asked for 524 TiB at the model's build."""
    cache = patchpix_cache(tmp_path / "cache")
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    out = cli_refused(
        OutOfMemory.exit_code, "pack", "train", "--name", "p4", "--steps", "2",
        "--ch", "1000000", "--device", "cpu",
    )  # fmt: skip
    assert "Error: ran out of memory: it asked for" in out and "can't allocate memory" in out, out
    assert "Hint: lower the sizes given (--ch 1000000)" in out, out
