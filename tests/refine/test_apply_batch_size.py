"""`refine apply --batch-size` and a refined folder: one folder, one batching.

The refiner's pixels differ by ±1/255 between batch sizes, and the README promises a killed apply
run again ends byte for byte as an uninterrupted one only "with the same --batch-size". The batch
size was not in the refined folder's settings: a kill, then a rerun with another batch size,
finished the folder with two batchings mixed, silently. Now:

- an unfinished refined folder (a real SIGKILL) resumed with another batch size is refused with
  one ``Error:`` naming ``--batch-size`` and the recorded value, nothing in it changed; with the
  recorded one it ends as an uninterrupted apply;
- a finished refined folder is unaffected by another batch size: nothing refined, nothing
  changed, and what it refines again (a changed samples.npz: every image) is refined in its own;
- a folder started before the batch size was recorded resumes with the one given.

The shared toy stack with a 32 px refiner (tests/support/stack.py), subprocesses under one thread
and in-process runs under one thread (CPU reductions round by thread count).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_ok, cli_refused
from support.kill import kill_after_pngs
from support.stack import _settings, stack_with_refiner

from repackctl.errors import ConfigError
from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.sample.run import run_sample

pytestmark = pytest.mark.usefixtures("one_thread")
REFINER = "round4-refine32"
N, BATCH, OTHER = 24, 3, 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder but the writer's lock (its record names the writer's pid)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SAMPLES_LOCK
    }


def _args(stack: dict[str, str], src: Path, batch: int) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", str(batch)]  # fmt: skip


@pytest.fixture
def samples(stack, tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(samples folder, its refined folder, the files of an uninterrupted apply in batches of
    ``BATCH``, moved away so that the apply under test writes where it wrote)."""
    with one_torch_thread():
        settings = _settings(stack, run="dit-tiny", num=N, steps=2, out=str(tmp_path / "s"))
        src = run_sample(settings).out_dir
    cli_ok(*_args(stack, src, BATCH))
    out = tmp_path / f"s--refine-{REFINER}"
    ref = _files(out)
    shutil.move(out, tmp_path / "uninterrupted")
    return src, out, ref


def _killed(stack: dict[str, str], src: Path, out: Path) -> dict[str, bytes]:
    """A real SIGKILL of `refine apply --batch-size BATCH` once it wrote a refined PNG; the
    files it left (an unfinished folder)."""
    env = subprocess_env(Path(stack["runs"]).parent)
    kill_after_pngs(_args(stack, src, BATCH), env, out, pngs=1, poll=0.001)
    assert not (out / "protocol.json").exists(), "the apply finished before the kill"
    assert 1 <= len(list(out.glob("0*.png"))) < N
    return _files(out)


@pytest.mark.slow
def test_unfinished_folder_resumed_with_another_batch_size_is_refused(stack, samples):
    src, out, ref = samples
    left = _killed(stack, src, out)
    msg = cli_refused(ConfigError.exit_code, *_args(stack, src, OTHER))
    assert f"--batch-size {BATCH}" in msg and f"not {OTHER}" in msg, msg
    assert str(out) in msg
    assert json.loads(left[SETTINGS_JSON])["batch_size"] == BATCH  # recorded when claimed
    assert _files(out) == left  # nothing written, nothing lost
    cli_ok(*_args(stack, src, BATCH))  # the recorded batch size finishes it
    assert _files(out) == ref  # byte for byte an uninterrupted apply


@pytest.mark.slow
def test_finished_folder_is_unaffected_by_another_batch_size(stack, samples):
    src, out, ref = samples
    shutil.copytree(out.parent / "uninterrupted", out)
    assert "0 now" in cli_ok(*_args(stack, src, OTHER))  # nothing refined, not refused
    assert _files(out) == ref
    # a changed samples.npz: every image is refined again, in the folder's own batching (the
    # toy refiner's CPU pixels happen not to depend on it: this checks the folder is repaired)
    (out / "samples.npz").write_bytes(b"not the recorded file")
    cli_ok(*_args(stack, src, OTHER))
    now = _files(out)
    assert {k for k in ref if k.endswith(".png")} <= set(now)
    assert all(now[k] == ref[k] for k in ref if k.endswith(".png") or k == "samples.npz")


@pytest.mark.slow
def test_folder_without_a_recorded_batch_size_still_resumes(stack, samples):
    src, out, ref = samples
    _killed(stack, src, out)
    started = json.loads((out / SETTINGS_JSON).read_text())
    started.pop("batch_size", None)  # as an earlier version started it
    (out / SETTINGS_JSON).write_text(json.dumps(started))
    cli_ok(*_args(stack, src, BATCH))  # unknown, accepted
    now = _files(out)
    assert json.loads(now[SETTINGS_JSON]) == started  # left as it was
    assert all(now[k] == ref[k] for k in ref if k != SETTINGS_JSON)
