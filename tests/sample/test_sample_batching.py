"""`sample --batch-size` and the number of processes: one samples folder, one batching.

Sample i is seeded from (seed, i), but batched matmuls round by batch shape: the toy DiT's
latents differ by ~1e-6 between --batch-size 2 and 8 (every sample) and some PNGs by 1/255; one
process against two (shares ``owned_range`` cut in other batches) changes the latents of the
samples whose batch changed shape. The folder's settings recorded neither, so a killed run
resumed with another batch size or process count finished the folder with two batchings mixed,
silently. Now the settings file records ``batch_size`` and ``world_size``:

- an unfinished folder (a real SIGKILL) resumed with another ``--batch-size`` is refused with one
  ``Error:`` naming the recorded one, nothing in it changed; with it, it ends as an
  uninterrupted run, byte for byte;
- resumed by two processes, a folder started by one recomputes the batches of one process and
  ends as an uninterrupted one-process run, byte for byte;
- a finished folder is unaffected by another ``--batch-size`` (nothing made, nothing changed),
  and what it makes again (a lost PNG) is made in its own;
- a folder started before these were recorded resumes with the batch size given.

The shared toy stack (tests/support/stack.py); subprocesses under one thread and in-process
runs under one thread (CPU reductions round by thread count).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import shared_t2i_stack
from support.cli import cli_ok, cli_refused
from support.kill import kill_after_pngs
from support.launch import start_two
from support.stack import shared_stack

from repackctl.errors import ConfigError
from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK

pytestmark = pytest.mark.usefixtures("one_thread")
MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
N, BATCH, OTHER = 12, 2, 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _args(stack: dict[str, str], out: Path, batch: int, num: int = N, steps: int = 30) -> list[str]:
    return ["sample", "-r", "dit-tiny", "-n", str(num), "--steps", str(steps), "--seed", "3",
            "--batch-size", str(batch), "--out", str(out), "--runs", stack["runs"],
            "--cache", stack["cache"], "--device", "cpu"]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder (``latents/`` included) but the writer's lock."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SAMPLES_LOCK
    }


def _killed(stack: dict[str, str], args: list[str], out: Path, num: int = N) -> dict[str, bytes]:
    """A real SIGKILL of `sample ARGS` once it wrote a PNG; the files it left (unfinished)."""
    kill_after_pngs(args, subprocess_env(Path(stack["runs"]).parent), out, pngs=1, poll=0.001)
    assert not (out / "protocol.json").exists(), "the run finished before the kill"
    assert 1 <= len(list(out.glob("0*.png"))) < num
    return _files(out)


@pytest.fixture(scope="module")
def killed_once(stack, tmp_path_factory) -> Path:
    """The folder a real SIGKILL of `sample --batch-size BATCH` left once it wrote a PNG
    (``_killed``); the tests that resume it copy it."""
    out = tmp_path_factory.mktemp("round6-killed") / "killed"
    _killed(stack, _args(stack, out, BATCH), out)
    return out


@pytest.mark.slow
def test_unfinished_folder_resumed_with_another_batch_size_is_refused(stack, killed_once, tmp_path):
    cli_ok(*_args(stack, tmp_path / "ref", BATCH))
    ref = _files(tmp_path / "ref")
    assert json.loads(ref[SETTINGS_JSON])["batch_size"] == BATCH  # recorded when claimed
    out = tmp_path / "killed"
    shutil.copytree(killed_once, out)
    left = _files(out)
    msg = cli_refused(ConfigError.exit_code, *_args(stack, out, OTHER))
    assert f"--batch-size {BATCH}" in msg and f"not {OTHER}" in msg, msg
    assert str(out) in msg
    assert _files(out) == left  # nothing written, nothing lost
    cli_ok(*_args(stack, out, BATCH))  # the recorded batch size finishes it
    now = _files(out)
    assert now.keys() == ref.keys()
    assert [k for k in ref if k != "protocol.json" and now[k] != ref[k]] == []


@pytest.mark.slow
def test_finished_folder_is_unaffected_by_another_batch_size(stack, tmp_path):
    out = tmp_path / "done"
    cli_ok(*_args(stack, out, BATCH, steps=2))
    ref = _files(out)
    assert "0 now" in cli_ok(*_args(stack, out, OTHER, steps=2))  # nothing made, not refused
    assert _files(out) == ref
    # samples.npz and a PNG lost: the PNG is made again in the folder's own batching (sample 4
    # rounds to other pixels in a batch of 8: measured), so the rebuilt samples.npz holds the
    # recorded pixels (in another batching, that was refused: "it cannot be rebuilt")
    (out / "samples.npz").unlink()
    (out / "000004.png").unlink()
    assert "1 now" in cli_ok(*_args(stack, out, OTHER, steps=2))
    now = _files(out)
    assert [k for k in ref if k.endswith(".png") and now[k] != ref[k]] == []
    card, ref_card = json.loads(now["protocol.json"]), json.loads(ref["protocol.json"])
    assert (
        card["files"]["samples.npz"]["images_sha256"]
        == (ref_card["files"]["samples.npz"]["images_sha256"])
    )


@pytest.mark.slow
def test_folder_without_a_recorded_batching_still_resumes(stack, killed_once, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(killed_once, out)
    started = json.loads((out / SETTINGS_JSON).read_text())
    for key in ("batch_size", "world_size"):
        started.pop(key)  # as an earlier version started it
    (out / SETTINGS_JSON).write_text(json.dumps(started))
    cli_ok(*_args(stack, out, OTHER))  # unknown: accepted
    assert json.loads((out / SETTINGS_JSON).read_text()) == started  # left as it was
    assert len(list(out.glob("0*.png"))) == N


@pytest.mark.slow
def test_folder_resumed_by_two_processes_ends_as_one_process_made_it(stack, tmp_path):
    # 16 samples in batches of 3: one process ends on a batch of one sample (15), two processes
    # on batches of two (6-7, 14-15): sample 15's latent rounds differently (measured)
    num, batch, steps = 16, 3, 40
    ref_dir, out = tmp_path / "ref", tmp_path / "killed"
    cli_ok(*_args(stack, ref_dir, batch, num, steps))
    ref = _files(ref_dir)
    assert json.loads(ref[SETTINGS_JSON])["world_size"] == 1
    _killed(stack, _args(stack, out, batch, num, steps), out, num)
    env = subprocess_env(Path(stack["runs"]).parent)
    code, _, err = start_two([MAIN, *_args(stack, out, batch, num, steps)], env).wait(240)
    assert code == 0, err[-2000:]
    now = _files(out)
    assert json.loads(now[SETTINGS_JSON])["world_size"] == 1  # the job that started it
    assert now.keys() == ref.keys()
    assert [k for k in ref if k != "protocol.json" and now[k] != ref[k]] == []


@pytest.mark.slow
def test_text_to_image_folder_is_refused_another_batch_size_too(tmp_path_factory, tmp_path):
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("round6-t2i") / "w")
    args = ["sample", "-r", "tA", "--prompt", "a red star", "--prompt", "a blue ring", "-n", "8",
            "--steps", "60", "--grid", "0", "--seed", "3", "--device", "cpu", "--runs",
            str(work / "runs"), "--cache", str(work / "cache")]  # fmt: skip
    out = tmp_path / "killed"
    kill_after_pngs([*args, "--batch-size", "2", "--out", str(out)], subprocess_env(work), out,
                    pngs=1, poll=0.001)  # fmt: skip
    assert not (out / "protocol.json").exists(), "the run finished before the kill"
    left = _files(out)
    assert json.loads(left[SETTINGS_JSON])["batch_size"] == 2
    msg = cli_refused(ConfigError.exit_code, *args, "--batch-size", "4", "--out", str(out))
    assert "--batch-size 2" in msg and "not 4" in msg, msg
    assert _files(out) == left
    assert "8 (" in cli_ok(*args, "--batch-size", "2", "--out", str(out))
