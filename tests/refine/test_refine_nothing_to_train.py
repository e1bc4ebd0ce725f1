"""`refine train --steps N` with N at or below the run's step shows the run and changes nothing in
its folder but train.lock (it used to rewrite config.json, metrics, log.txt, TensorBoard)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _run_files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but train.lock, by relative path, with its bytes."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


def _train(stack, steps: str) -> str:
    args = ["refine", "train", "--pack-run", "pack-tiny", "--name", "refine-idle", "--steps",
            steps, "--batch-size", "4", "--base-channels", "8", "--disc-channels", "8",
            "--ckpt-every", "2", "--cache", stack["cache"], "--runs", stack["runs"],
            "--device", "cpu"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_steps_at_or_below_the_step_change_nothing(stack) -> None:
    _train(stack, "2")
    run = Path(stack["runs"]) / "refine-idle"
    before = _run_files(run)
    for steps in ("2", "1"):
        out = _train(stack, steps)
        assert "nothing to train" in out and "at step 2" in out, out
        assert _run_files(run) == before, steps
