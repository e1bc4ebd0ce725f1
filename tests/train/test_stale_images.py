"""A killed run's pictures (``images/step-N.png``) drawn after its last checkpoint: the resumed
run drops them with the metrics rows and TensorBoard events of those steps, and says so in
``log.txt``. They stayed before: a run folder at step 8 showed a picture of step 10, drawn from
weights that no checkpoint holds (and kept it for good when the rerun drew other steps).

Real `repackctl train dit` processes ended after a chosen step by the crash tests' kill switch
(``REPACKCTL_TEST_CRASH_AFTER``, exit 137 as ``kill -9``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import private_copy, shared_packed_cache

from repackctl.crash import CRASH_ENV
from repackctl.train import latest_checkpoint, read_state
from repackctl.train.logging import read_metrics

# checkpoints every 4 steps, a picture every 2
DIT = ["train", "dit", "--steps", "12", "-b", "8", "--log-every", "5", "--ckpt-every", "4"]
DIT += ["--device", "cpu", "--image-every", "2", "--name", "run"]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    return shared_packed_cache(
        tmp_path_factory, tmp_path_factory.mktemp("s28-images") / "cache", 16
    )


def _train(tmp_path: Path, crash: str | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env(tmp_path)
    if crash is not None:
        env[CRASH_ENV] = crash
    cmd = [sys.executable, "-m", "repackctl", *DIT]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _pictures(run: Path) -> list[int]:
    return sorted(int(p.stem[5:]) for p in (run / "images").glob("step-*.png"))


@pytest.mark.slow
def test_pictures_drawn_after_the_last_checkpoint_go_with_the_resume(base_cache, tmp_path):
    private_copy(base_cache, tmp_path)
    run = tmp_path / "runs" / "run"
    done = _train(tmp_path, crash="train-step-11")  # checkpoint 8; pictures up to step 10
    assert done.returncode == 137, done.stderr[-2000:]
    assert read_state(latest_checkpoint(run))["step"] == 8
    assert _pictures(run) == [2, 4, 6, 8, 10]

    done = _train(tmp_path, crash="train-step-9")  # resumed at 8, killed before step 10
    assert done.returncode == 137, done.stderr[-2000:]
    assert [r["step"] for r in read_metrics(run)] == [5]  # row 10 dropped, as the picture
    assert _pictures(run) == [2, 4, 6, 8]
    log = " ".join((run / "log.txt").read_text().split())
    line = "removed 1 picture(s) of steps after 8, where this run resumes: an interrupted "
    line += "attempt drew them from weights no checkpoint holds (images/step-0000010.png)"
    assert line in log

    done = _train(tmp_path)  # the rerun to the end draws them again
    assert done.returncode == 0, done.stderr[-2000:]
    assert _pictures(run) == [2, 4, 6, 8, 10, 12]
    log = " ".join((run / "log.txt").read_text().split())
    assert log.count("removed ") == 1  # nothing to remove this time: no second line
