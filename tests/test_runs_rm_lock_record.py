"""`runs rm` holds the run's training lock while it checks and moves the run away; it wrote no
record of its own into the lock file, which still named the training that wrote it last (long
ended). Meanwhile `runs info` said that old pid was training the run, and a training refused
(or a second `runs rm`) named that pid too. The removal now writes its own record: its pid and
`repackctl runs rm`.

A real second process holds the lock the way `runs rm` does (``runs._training_kept_out``, the
block `remove_run` deletes in); the run is written by the real checkpoint writer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from support.cli import cli_ok
from support.kill import dead_pid

from repackctl.errors import CheckpointError, ConfigError
from repackctl.run_lock import lock_run
from repackctl.runs import remove_run
from repackctl.train.checkpoint import save_checkpoint

REMOVER = """
import sys, time
from pathlib import Path
from repackctl.runs import _training_kept_out
with _training_kept_out(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.02)
"""


def _run_killed_past_its_checkpoint(runs: Path, old_pid: int) -> Path:
    """A pack run with a checkpoint at step 2, metrics rows of steps 1-3 (a training killed
    after step 3), and the lock record that training left (``old_pid``)."""
    run = runs / "pk"
    sd = {"w": torch.zeros(2)}
    save_checkpoint(run, 2, {"model": sd, "ema": sd}, {}, {"extra": {"stage": "pack"}})
    record = {"pid": old_pid, "host": None, "since": "2026-01-01 00:00:00"}
    (run / "train.lock").write_text(json.dumps(record) + "\n")
    time.sleep(0.02)
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_runs_rm_holding_the_lock_is_named_as_itself(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("REPACKCTL_RUNS", str(runs))
    old = dead_pid()
    run = _run_killed_past_its_checkpoint(runs, old)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    cmd = [sys.executable, "-c", REMOVER, str(run), str(ready), str(stop)]
    proc = subprocess.Popen(cmd, env=subprocess_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the remover never took the lock: {proc.communicate()[1][-2000:]}")
            time.sleep(0.02)
        out = cli_ok("runs", "info", "pk")
        assert f"pid {old}" not in out, out  # the ended training is not said to train it
        assert "being trained now" not in out and "the one starting now" not in out, out
        assert "metrics after step 2 1 row (step 3)" in out, out

        with pytest.raises(ConfigError) as refused:  # a training started meanwhile
            lock_run(run)
        said = str(refused.value)
        assert f"pid {proc.pid}" in said and f"pid {old}" not in said, said
        assert "is being removed by another process (`repackctl runs rm`" in said, said

        with pytest.raises(CheckpointError) as second:  # a second `runs rm`
            remove_run(run)
        said = str(second.value)
        assert f"pid {proc.pid}" in said and "being removed" in said, said
        assert run.is_dir()
    finally:
        stop.write_text("")
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
