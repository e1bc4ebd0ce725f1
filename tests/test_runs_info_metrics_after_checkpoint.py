"""`runs info` of a run whose training was killed after its newest checkpoint.

`metrics.jsonl` then holds rows of steps that no checkpoint holds (the resume drops them and
trains those steps again); `runs info` listed them as "metrics step N" like the others, so the
run looked further along than it is, while `pack train`'s summary stops at the checkpoint. Now
the metrics tail stops at the newest complete checkpoint and one line says how many rows were
logged past it, and why (a stopped training, or the one running now).

Real `repackctl pack train` processes ended after a chosen step by the crash tests' kill switch
(``REPACKCTL_TEST_CRASH_AFTER``, exit 137 as ``kill -9``); `runs info` and the resume to the end
run in-process (Typer's runner, one torch thread), the lock held by a second real process (a
lock this process held would be its own, which `runs info` does not name).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import patchpix_fixtures
from support.cli import cli_ok

from repackctl.crash import CRASH_ENV
from repackctl.train.logging import read_metrics

base_cache, cache = patchpix_fixtures("s28b-metrics")
pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

PACK = [
    *("pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16", "-c", "4"),
    *("--ch", "8", "--disc-channels", "8", "--batch-size", "8", "--steps", "6"),
    *("--ckpt-every", "2", "--log-every", "1", "--image-every", "0", "--device", "cpu"),
    *("--name", "pk"),
]


def _killed_after(tmp_path: Path, step: int) -> Path:
    env = subprocess_env(tmp_path, **{CRASH_ENV: f"train-step-{step}"})
    cmd = [sys.executable, "-m", "repackctl", *PACK]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr[-2000:]
    return tmp_path / "runs" / "pk"


def _info(*more: str) -> str:
    """`runs info pk` in-process (the sandbox's cache and runs roots are the test's)."""
    return cli_ok("runs", "info", "pk", *more)


# a second process that holds the run's lock (``hold_run_lock``, as `runs rm` does) until killed
HOLDER = """
import sys, time
from repackctl.run_lock import hold_run_lock
with hold_run_lock(sys.argv[1]) as held:
    print("locked" if held else "refused", flush=True)
    time.sleep(600)
"""


def test_rows_past_the_newest_checkpoint_are_named_not_listed(cache, tmp_path):
    run = _killed_after(tmp_path, 3)  # checkpoint step 2; rows of steps 1, 2, 3
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    out = _info()
    assert "checkpoint step-0000002 complete" in out, out
    assert "metrics step 2" in out and "metrics step 3" not in out, out
    assert "metrics after step 2 1 row (step 3) logged after step 2" in out, out
    assert "a resume drops these rows" in out, out
    data = json.loads(_info("--json"))
    assert [r["step"] for r in data["metrics_tail"]] == [1, 2]
    after = data["metrics_after_checkpoint"]
    assert (after["rows"], after["first_step"], after["checkpoint_step"]) == (1, 3, 2), after
    assert after["training"] is None

    # while a process holds the run's lock, the rows past the checkpoint may be its own (which
    # are then listed apart: tests/test_runs_info_live_metrics.py)
    cmd = [sys.executable, "-c", HOLDER, str(run)]
    holder = subprocess.Popen(cmd, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = _info()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert "being trained now (pid" in out, out

    # resumed to the end: every row is a checkpoint's, nothing is left out
    cli_ok(*PACK)
    out = _info()
    assert "metrics step 6" in out and "metrics after" not in out, out
    assert json.loads(_info("--json"))["metrics_after_checkpoint"] is None


def test_rows_of_a_run_without_a_checkpoint(cache, tmp_path):
    run = _killed_after(tmp_path, 1)  # no checkpoint yet; the row of step 1
    assert [r["step"] for r in read_metrics(run)] == [1]
    out = _info()
    assert "metrics step 1" not in out, out
    assert "metrics without checkpoint 1 row (step 1) logged, but the run has no" in out, out
    assert "a resume drops these rows and starts over" in out, out
