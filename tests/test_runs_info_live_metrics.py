"""`runs info` of a run that is being trained now shows its newest metrics rows.

A user watching a training wants its latest loss; `runs info` stopped the metrics at the newest
complete checkpoint and only counted the rows past it, so for most of a run's life the loss it
showed was that of a save long ago. The rows of the training running now are listed, marked
"(no checkpoint yet)"; those of a stopped training (no process holds the run) are still counted,
never listed: a resume drops them and trains those steps again (commit 6dee648). So are they
while a resume has taken the run's lock but not yet dropped them (metrics.jsonl not written since
the lock was taken): they are not the starting training's.

A real `repackctl pack train` killed after step 3 (checkpoint step 2), once per module (each test
takes a copy), then resumed in the background as a real process with no further checkpoint
before its end; the test kills it. The starting resume: a real process that takes the run's lock
as the engine does and waits. `runs info` runs in-process (Typer's runner, one torch thread):
the lock it reports is another process's either way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import patchpix_fixtures
from support.cli import cli_ok

from repackctl.crash import CRASH_ENV
from repackctl.train.logging import read_metrics

base_cache, _ = patchpix_fixtures("s29-live-metrics")
pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

PACK = [
    *("pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16", "-c", "4"),
    *("--ch", "8", "--disc-channels", "8", "--batch-size", "8", "--log-every", "1"),
    *("--image-every", "0", "--device", "cpu", "--name", "pk"),
]


def _info(*more: str) -> str:
    """`runs info pk` in-process (the sandbox's cache and runs roots are the test's)."""
    return cli_ok("runs", "info", "pk", *more)


def _wait_for_rows(run: Path, job: subprocess.Popen, last: int) -> None:
    """Until the resumed training has logged step ``last`` (or it ended: a failure)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        steps = [r["step"] for r in read_metrics(run)]
        if steps and steps[-1] >= last:
            return
        assert job.poll() is None, job.communicate()
        time.sleep(0.02)
    raise AssertionError(f"the training logged no step {last} in time: {steps}")


@pytest.fixture(scope="module")
def killed_base(base_cache, tmp_path_factory) -> Path:
    """Cache and runs roots of the run ``pk`` killed after step 3: checkpoint step 2, metrics
    rows of steps 1-3 (once per module; the tests take copies)."""
    root = tmp_path_factory.mktemp("s29-killed")
    shutil.copytree(base_cache, root / "cache")
    cmd = [sys.executable, "-m", "repackctl", *PACK, "--steps", "6", "--ckpt-every", "2"]
    env = subprocess_env(root, **{CRASH_ENV: "train-step-3"})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr[-2000:]
    return root


def _killed_after_step_3(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base``'s cache and runs at the test's roots; the run ``pk``."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path / "runs" / "pk"


def test_the_newest_rows_of_the_training_running_now_are_listed(killed_base, tmp_path):
    env = subprocess_env(tmp_path)
    run = _killed_after_step_3(killed_base, tmp_path)

    # resumed from step 2 with no checkpoint before step 100000: every row past 2 is live
    resumed = [*PACK, "--steps", "100000", "--ckpt-every", "100000"]
    job = subprocess.Popen(
        [sys.executable, "-m", "repackctl", *resumed],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_rows(run, job, 9)
        out = _info()
        data = json.loads(_info("--json"))
    finally:
        job.kill()
        job.wait(timeout=60)
    assert "checkpoint step-0000002 complete" in out, out
    assert "metrics step 2 epoch" in out, out  # the checkpoint's rows, as before
    # the last five rows (runs info's tail), oldest first, past the checkpoint's
    shown = [int(s) for s in re.findall(r"metrics step (\d+) \(no checkpoint yet\) epoch", out)]
    assert len(shown) == 5 and shown == list(range(shown[0], shown[0] + 5)), out
    assert shown[0] >= 5, out
    assert f"being trained now (pid {job.pid}" in out, out
    assert "(the newest 5 listed, marked 'no checkpoint yet')" in out, out
    after = data["metrics_after_checkpoint"]
    assert after["training"] is not None and f"pid {job.pid}" in after["training"], after
    assert after["live"] is True, after
    newest = [r["step"] for r in after["newest"]]
    assert newest == list(range(newest[0], newest[0] + 5)) and newest[0] >= shown[0], newest
    assert after["last_step"] == newest[-1] and after["first_step"] == 3, after
    assert [r["step"] for r in data["metrics_tail"]] == [1, 2], data["metrics_tail"]

    # the training is gone: its rows are a stopped attempt's, counted and not listed
    out = _info()
    assert "no checkpoint yet" not in out and "a resume drops these rows" in out, out
    assert f"metrics step {newest[-1]}" not in out, out
    data = json.loads(_info("--json"))
    assert data["metrics_after_checkpoint"]["newest"] == [], data["metrics_after_checkpoint"]


# a process that takes the run's training lock as a training starts (the engine's `lock_run`),
# and holds it until it is killed: a resume that has not reached its first step yet
STARTING = """
import sys, time
from repackctl.run_lock import lock_run
lock_run(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_stopped_attempts_rows_are_not_taken_for_the_starting_trainings(killed_base, tmp_path):
    run = _killed_after_step_3(killed_base, tmp_path)
    env = subprocess_env(tmp_path)
    cmd = [sys.executable, "-c", STARTING, str(run)]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "locked"
        out = _info()
        data = json.loads(_info("--json"))
    finally:
        job.kill()
        job.wait(timeout=60)
    assert "metrics step 3" not in out and "no checkpoint yet" not in out, out
    assert f"the one starting now (pid {job.pid}" in out and "has logged nothing yet" in out, out
    after = data["metrics_after_checkpoint"]
    assert (after["rows"], after["first_step"], after["checkpoint_step"]) == (1, 3, 2), after
    assert after["live"] is False and after["newest"] == [], after
    assert f"pid {job.pid}" in after["training"], after
