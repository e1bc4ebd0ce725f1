"""`pack train` and `refine train` on a run none of whose checkpoints verifies (a half-copied
run folder, a damaged disk) are refused with an `Error:` naming the newest one, and change
nothing. They trained again from step 0 over the damaged folders, re-saved and rotated them
away, and cut `metrics.jsonl`: what `train dit` already refuses.

Real components: `extract` (patchpix, 32 px) → `pack train` (2 steps) → `refine train` (2 steps)
through the CLI on a real Zarr cache and real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16", "--num-workers", "0"]


def _files(run: Path) -> dict[Path, bytes]:
    """The run's files, as bytes (but its lock file, which records the last taker)."""
    return {
        p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.suffix != ".lock"
    }


def _lose_optim(run: Path) -> dict[Path, bytes]:
    """Delete ``optim.pt`` of every checkpoint of ``run``; the files left."""
    for folder in (run / "checkpoints").iterdir():
        (folder / "optim.pt").unlink()
    return _files(run)


def test_pack_and_refine_runs_with_no_usable_checkpoint_are_refused(tmp_path):
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    cli_ok("extract", *SRC, "--chunk", "8", "--shard", "8", roots[0], roots[1])
    pack = ["pack", "train", *SRC[:4], "-n", "16", "--steps", "2", "--batch-size", "4", "-c", "4"]
    pack += ["--ch", "8", "--name", "pk", "--image-every", "0", "--device", "cpu", *roots]
    cli_ok(*pack)
    refine = ["refine", "train", "--pack-run", "pk", "--steps", "2", "--batch-size", "4"]
    refine += ["--name", "rf", "--device", "cpu", *roots]
    cli_ok(*refine)
    for run, args in (("pk", pack), ("rf", refine)):
        before = _lose_optim(tmp_path / "runs" / run)
        args = [*args[: args.index("--steps") + 1], "4", *args[args.index("--steps") + 2 :]]
        out = cli_refused(CheckpointError.exit_code, *args)
        assert "none of the 1 checkpoint(s)" in out and "optim.pt is missing" in out, out
        assert _files(tmp_path / "runs" / run) == before  # nothing changed
