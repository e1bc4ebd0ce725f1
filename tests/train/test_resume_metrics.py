"""A killed run's ``metrics.jsonl`` (and ``curves.png``, drawn from it) after the rerun equals an
uninterrupted run's: the resume is the same result, curves included.

A metrics row averages the steps since the previous row (``log_every``); a checkpoint inside
that window carries the window's sums and counts, so the first row after the resume averages
the same steps, to the bit. Rows the killed process wrote after its last checkpoint are
rewritten, not duplicated. Only the wall-clock rates (``TIME_FIELDS``) may differ.

Real processes: `repackctl train dit` ended after a chosen step by the crash tests' kill switch
(``REPACKCTL_TEST_CRASH_AFTER``, exit 137 as ``kill -9``), and the toy training script SIGKILLed
while it writes a chosen checkpoint (``REPACKCTL_TEST_CKPT_KILL``). Every training command
(`pack train`, `train dit`, `train t2i`, `refine train`) runs the same ``Trainer``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support import train_toy_script as toy
from support.caches import private_copy, shared_packed_cache
from support.ckpt_state import write_state
from support.cli import cli_ok

from repackctl.crash import CRASH_ENV
from repackctl.errors import CheckpointError
from repackctl.train import latest_checkpoint, read_state, train
from repackctl.train.checkpoint import KILL_ENV
from repackctl.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "train_toy_script.py"
# the wall-clock fields of a metrics row: the only ones a resumed run may write otherwise
TIME_FIELDS = {"steps/s", "samples/s"}
# rows every 5 steps, checkpoints every 4: the kill after step 11 leaves checkpoint 8, inside
# the window of rows 5-10, and row 10, written after it
DIT = ["train", "dit", "--steps", "20", "-b", "8", "--log-every", "5", "--ckpt-every", "4"]
DIT += ["--device", "cpu", "--image-every", "0"]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    return shared_packed_cache(
        tmp_path_factory, tmp_path_factory.mktemp("resume-metrics") / "cache", 16
    )


@pytest.fixture(autouse=True)
def one_thread():
    """The thread count of the subprocesses: in-process runs reproduce them bit for bit."""
    with one_torch_thread():
        yield


def _rows(run: Path) -> list[dict]:
    """The run's metrics rows without the wall-clock fields (which every row must have)."""
    rows = read_metrics(run)
    assert rows and all(TIME_FIELDS <= r.keys() for r in rows)
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def _same_metrics(resumed: Path, straight: Path) -> None:
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((straight / "metrics.jsonl").read_text().splitlines())
    assert _rows(resumed) == _rows(straight)  # floats compared exactly
    assert (resumed / "curves.png").read_bytes() == (straight / "curves.png").read_bytes()


def _strip_windows(run: Path) -> None:
    """The run's checkpoints as a version before metrics windows were saved wrote them."""
    for path in (run / "checkpoints").glob("step-*/state.json"):
        state = json.loads(path.read_text())
        del state["metrics_window"]
        write_state(path, state)


def test_train_dit_killed_between_checkpoints_logs_the_same_metrics(base_cache, tmp_path):
    private_copy(base_cache, tmp_path)
    runs = tmp_path / "runs"
    env = subprocess_env(tmp_path) | {CRASH_ENV: "train-step-11"}
    cmd = [sys.executable, "-m", "repackctl", *DIT, "--name", "killed"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        cli_ok(*DIT, "--name", "straight")  # meanwhile, the uninterrupted run
        assert proc.wait(timeout=120) == 137, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = runs / "killed"
    assert read_state(latest_checkpoint(killed))["step"] == 8
    assert [r["step"] for r in read_metrics(killed)] == [5, 10]  # row 10: after checkpoint 8
    shutil.copytree(killed, runs / "older")

    assert "resumed at 8" in cli_ok(*DIT, "--name", "killed")
    _same_metrics(killed, runs / "straight")

    # a checkpoint without the window resumes as before (row 10 averages steps 9-10), noted
    _strip_windows(runs / "older")
    cli_ok(*DIT, "--name", "older")
    note = "step-0000008 holds no metrics window (written by an older version): the metrics "
    note += "row of step 10 averages only steps 9-10"
    assert note in (runs / "older" / "log.txt").read_text()
    older, straight = _rows(runs / "older"), _rows(runs / "straight")
    assert [r["step"] for r in older] == [r["step"] for r in straight]
    assert older[1]["loss/model"] != straight[1]["loss/model"]
    assert older[:1] + older[2:] == straight[:1] + straight[2:]


def test_toy_run_killed_while_saving_a_checkpoint_logs_the_same_metrics(tmp_path):
    """Two optimizers (a GAN critic), a real SIGKILL while checkpoint 12 is written."""
    argv = ["--steps", "20", "--ckpt-every", "4", "--keep-last", "2", "--gan"]
    killed = tmp_path / "killed"
    env = subprocess_env(tmp_path, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(SCRIPT), str(killed), *argv]
    done = subprocess.run(cmd, env=env | {KILL_ENV: "written@12"}, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert read_state(latest_checkpoint(killed))["step"] == 8
    assert [r["step"] for r in read_metrics(killed)] == [5, 10]

    resumed = {}
    for run in (killed, tmp_path / "straight"):  # the rerun, and the uninterrupted run
        args = toy.parse([str(run), *argv])
        resumed[run.name] = train(toy.task_from_args(args), toy.config_from_args(args)).resumed_from
    assert resumed == {"killed": 8, "straight": None}
    _same_metrics(killed, tmp_path / "straight")
    assert {"loss/gen", "loss/disc", "grad_norm/disc", "mse"} <= _rows(killed)[1].keys()

    # a malformed window is a bad checkpoint, named in one line (as any malformed field)
    ckpt = latest_checkpoint(killed)
    state = read_state(ckpt)
    state["metrics_window"] = [{"sums": {"mse": 0.5}, "counts": {}}]
    write_state(ckpt / "state.json", state)
    with pytest.raises(CheckpointError, match="metrics_window.0: sums and counts name differ"):
        read_state(ckpt)


@pytest.mark.parametrize("resume_step", [0, 2])
def test_tensorboard_shows_the_rerun_not_the_killed_attempt(tmp_path, resume_step):
    """TensorBoard's events of a killed attempt after the resumed step are hidden, also when it
    was killed before its first checkpoint (resume step 0): each step shows one value."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from repackctl.train.logging import MetricsLogger

    killed = MetricsLogger(tmp_path)
    killed.config({"lr": 1.0})
    for s in (1, 2, 3):
        killed.log({"step": s, "loss": float(s)})
    killed.close()
    # a rerun is a later process: its events file is named (and read) after the killed one's.
    # Two writers of one process in the same second are ordered by a counter instead, whose
    # "…10" sorts before "…9" once earlier tests made writers.
    time.sleep(1.05)
    rerun = MetricsLogger(tmp_path, resume_step=resume_step)
    rerun.config({"lr": 2.0})
    for s in range(resume_step + 1, 4):
        rerun.log({"step": s, "loss": 10.0 + s})
    rerun.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    seen = [(e.step, e.value) for e in events.Scalars("loss")]
    kept = [(s, float(s)) for s in range(1, resume_step + 1)]
    assert seen == kept + [(s, 10.0 + s) for s in range(resume_step + 1, 4)]
    assert [
        json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ] == [v for _, v in seen]
    # the config: the first attempt's at step 0 when its checkpoint was kept, and the rerun's at
    # its first step; the killed attempt's is not shown twice, nor the run's hparams
    # (text is read as TensorBoard's server reads it, which purges tensors too)
    served = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    served.Reload()
    texts = [
        (e.step, json.loads(e.tensor_proto.string_val[0].decode().strip("`\n"))["lr"])
        for e in served.Tensors("config/text_summary")
    ]
    assert texts == ([(0, 1.0), (3, 2.0)] if resume_step else [(0, 2.0)])
    assert len(list((tmp_path / "tb" / "hparams").glob("events.out.tfevents.*"))) == 1
