"""Rotation (``--keep-last``) counts intact checkpoints only: a damaged ``step-…`` folder (a file
that fails its sha256) took a slot, so ``keep_last`` good checkpoints became fewer, and a second
damage sent the run back to step 0. A damaged folder is left as it is (never counted, never
deleted): it may be what the user wants to repair.

Real processes of the toy training script, killed by the crash tests' switch
(``REPACKCTL_TEST_CRASH_AFTER``, exit 137 as ``kill -9``), on checkpoints written by the real
trainer and damaged on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from support import train_toy_script as toy

from repackctl.crash import CRASH_ENV
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "train_toy_script.py"
ARGV = ["--ckpt-every", "4", "--keep-last", "2"]


def _script(run: Path, tmp_path: Path, steps: int, crash: str | None = None):
    env = subprocess_env(tmp_path, PYTHONPATH=str(ROOT))
    if crash is not None:
        env[CRASH_ENV] = crash
    cmd = [sys.executable, str(SCRIPT), str(run), "--steps", str(steps), *ARGV]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _damage(folder: Path) -> bytes:
    """Flip the last bytes of the folder's weights (same size: only the sha256 tells)."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    path.write_bytes(bytes(data))
    return bytes(data)


def _steps(run: Path, intact: bool) -> list[int]:
    """Steps of the run's ``step-…`` folders that pass verification (or, else, that fail it)."""
    folders = sorted((run / "checkpoints").glob("step-*"))
    return [int(p.name[5:]) for p in folders if (ckpt_io.checkpoint_problem(p) is None) == intact]


@pytest.mark.slow
def test_a_damaged_folder_takes_no_keep_last_slot_and_is_left_as_it_is(tmp_path) -> None:
    run = tmp_path / "run"
    args = toy.parse([str(run), "--steps", "10", *ARGV])
    with one_torch_thread():
        train(toy.task_from_args(args), toy.config_from_args(args))  # saves 4, 8, 10: keeps 8, 10
    assert _steps(run, intact=True) == [8, 10]
    damaged = _damage(run / "checkpoints" / "step-0000010")  # off the grid of every 4 steps

    # trained on to 20 (resumed from 8, past the damaged 10), killed after step 13: checkpoint
    # 12 was saved and rotated; the old rotation counted 10 and deleted 8, the other good one
    done = _script(run, tmp_path, 20, crash="train-step-13")
    assert done.returncode == 137, done.stderr[-2000:]
    assert "skipping checkpoint step-0000010" in done.stderr
    assert _steps(run, intact=True) == [8, 12]
    assert _steps(run, intact=False) == [10]
    assert (run / "checkpoints" / "step-0000010" / "model.safetensors").read_bytes() == damaged

    # a second damage: the run still resumes from a good checkpoint, not from step 0
    _damage(run / "checkpoints" / "step-0000012")
    done = _script(run, tmp_path, 20)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"step": 20, "resumed_from": 8}
    assert _steps(run, intact=True) == [16, 20]  # 12 re-saved, then rotated away as usual
    assert _steps(run, intact=False) == [10]  # still the user's to repair or remove
    assert (run / "checkpoints" / "step-0000010" / "model.safetensors").read_bytes() == damaged


def _save(run: Path, step: int) -> Path:
    sd = {"w": torch.full((4,), float(step))}
    return ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, {}, {}, keep_last=2)


def test_cut_and_incomplete_folders_are_neither_counted_nor_deleted(tmp_path) -> None:
    """A file cut short (a half-copied folder: its size tells) and a folder without a file
    count as damaged: both stay, and two intact checkpoints are kept beside them."""
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step)
    assert _steps(run, intact=True) == [3, 4]
    cut = run / "checkpoints" / "step-0000004" / "optim.pt"
    cut.write_bytes(cut.read_bytes()[:10])
    _save(run, 5)
    assert _steps(run, intact=True) == [3, 5]  # the old rotation kept 4 and 5 only
    assert _steps(run, intact=False) == [4]
    assert len(cut.read_bytes()) == 10
    (run / "checkpoints" / "step-0000003" / "ema.safetensors").unlink()
    _save(run, 6)
    assert _steps(run, intact=True) == [5, 6]
    assert _steps(run, intact=False) == [3, 4]
