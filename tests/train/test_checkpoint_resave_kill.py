"""A ``kill -9`` at every instant of a checkpoint save, a re-save of an existing step folder and
the pruning of old ones, followed by a clean rerun (DESIGN.md §6): the rerun resumes from the
newest complete checkpoint, bit-identically, and never loses the only complete one.

Real subprocesses of the toy training script are killed (SIGKILL) at a precise point of
``save_checkpoint`` by ``REPACKCTL_TEST_CKPT_KILL``. A step is re-saved when resume skipped its
folder (here: a corrupted newest checkpoint, as a damaged disk or copy leaves it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread
from support import train_toy_script as toy

from repackctl.train import checkpoint as ckpt_io
from repackctl.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "train_toy_script.py"
STEPS = 20


def _argv(run: Path, every: int, keep: int) -> list[str]:
    return [str(run), "--steps", str(STEPS), "--ckpt-every", str(every), "--keep-last", str(keep)]


def _script(
    run: Path, every: int, keep: int, kill: str | None = None
) -> subprocess.CompletedProcess:
    """The toy training script as a real process; ``kill`` is a ``REPACKCTL_TEST_CKPT_KILL``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop(ckpt_io.KILL_ENV, None)
    if kill is not None:
        env[ckpt_io.KILL_ENV] = kill
    cmd = [sys.executable, str(SCRIPT), *_argv(run, every, keep)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _killed(run: Path, every: int, keep: int, kill: str) -> None:
    done = _script(run, every, keep, kill)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def _rerun(run: Path, every: int, keep: int) -> dict:
    """A clean rerun to the end; returns its summary (``step``, ``resumed_from``)."""
    done = _script(run, every, keep)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model", "ema"):
        out.update({f"{name}.{k}": v for k, v in ckpt_io.load_weights(ckpt, name).items()})
    return out


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _corrupt_newest(run: Path) -> Path:
    """Flip bytes of the newest checkpoint's weights: resume skips it, and re-saves its step."""
    newest = ckpt_io.list_checkpoints(run)[-1]
    path = newest / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    path.write_bytes(bytes(data))
    assert ckpt_io.latest_checkpoint(run, warn=None) != newest
    return newest


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The final checkpoint of an uninterrupted run (in-process, one thread like the scripts)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    args = toy.parse(_argv(run, 5, 0))
    with one_torch_thread():
        result = train(toy.task_from_args(args), toy.config_from_args(args))
    assert result.step == STEPS
    return result.checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``copy(run, every, keep)``: ``run`` becomes a copy of a finished uninterrupted run saved
    every ``every`` steps keeping ``keep`` (trained once per module, in-process: only the state
    before the kill; each kill and each rerun is a real process)."""
    done: dict[tuple[int, int], Path] = {}

    def copy(run: Path, every: int, keep: int) -> None:
        if (every, keep) not in done:
            src = tmp_path_factory.mktemp(f"finished-{every}-{keep}") / "run"
            args = toy.parse(_argv(src, every, keep))
            with one_torch_thread():
                result = train(toy.task_from_args(args), toy.config_from_args(args))
            assert (result.step, result.resumed_from) == (STEPS, None)
            done[(every, keep)] = src
        shutil.copytree(done[(every, keep)], run)

    return copy


# --------------------------------------------------------------------------- re-save window


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "resumed_from"),
    [
        ("written", None),  # the new folder complete, nothing renamed: the old one stays
        ("aside", STEPS),  # between the two renames: no step folder at all
        ("swapped", STEPS),  # the new folder in place, the old one not yet deleted
    ],
)
def test_kill_while_the_only_checkpoint_is_resaved(
    tmp_path, straight, finished, point, resumed_from
):
    """Only the final step is saved and its folder is corrupt: the rerun starts over and
    re-saves it. A kill between the renames left no ``step-`` folder and the old code deleted
    both temporaries, the only complete checkpoint among them, so the run started over again."""
    run = tmp_path / "run"
    finished(run, STEPS, 1)
    _corrupt_newest(run)
    _killed(run, STEPS, 1, point)
    pid_free = [n.rsplit("-", 1)[0] for n in _names(run)]
    if point == "aside":
        assert pid_free == [".tmp-old-step-0000020", ".tmp-step-0000020"]

    assert _rerun(run, STEPS, 1) == {"step": STEPS, "resumed_from": resumed_from}
    assert _names(run) == ["step-0000020"]  # temporaries gone, nothing else deleted
    assert _same(ckpt_io.latest_checkpoint(run), straight)


@pytest.mark.slow
def test_resave_after_a_resume_survives_a_kill_between_the_renames(tmp_path, straight, finished):
    """Resumed from step 15 past a corrupt step 20: killed between the renames of the re-save
    of 20, the rerun goes on from the new step 20 (complete, fsynced), not from 15."""
    run = tmp_path / "run"
    finished(run, 5, 0)
    _corrupt_newest(run)
    _killed(run, 5, 0, f"aside@{STEPS}")
    assert "step-0000020" not in _names(run)
    assert _rerun(run, 5, 0) == {"step": STEPS, "resumed_from": STEPS}
    assert _names(run) == [f"step-{s:07d}" for s in (5, 10, 15, 20)]
    assert _same(ckpt_io.checkpoints_dir(run) / "step-0000020", straight)


# --------------------------------------------------------------------------- rotation


@pytest.mark.slow
def test_rotation_keeps_the_checkpoint_just_written_next_to_a_skipped_newer_one(
    tmp_path, straight, finished
):
    """keep_last=1 with a corrupt step 20 ahead: the old rotation kept only that folder and
    deleted each checkpoint the resumed run wrote, so a kill sent the run back to step 0."""
    run = tmp_path / "run"
    finished(run, 5, 1)
    assert _names(run) == ["step-0000020"]
    _corrupt_newest(run)
    _killed(run, 5, 1, "written@15")  # saves 5 and 10 done, 15 being written
    assert [n for n in _names(run) if n.startswith("step-")] == ["step-0000010", "step-0000020"]
    assert _rerun(run, 5, 1) == {"step": STEPS, "resumed_from": 10}
    assert _names(run) == ["step-0000020"]
    assert _same(ckpt_io.latest_checkpoint(run), straight)


@pytest.mark.slow
def test_kill_while_pruning_leaves_no_half_deleted_step_folder(tmp_path, straight):
    """A pruned folder is renamed before it is deleted: a kill leaves a temporary that the
    rerun removes, never a damaged ``step-`` folder that stays forever."""
    run = tmp_path / "run"
    _killed(run, 5, 1, "pruning@5")  # saving 10 prunes 5
    pid_free = [n.rsplit("-", 1)[0] for n in _names(run)]
    assert pid_free == [".tmp-pruned-step-0000005", "step"]
    assert ckpt_io.latest_checkpoint(run, warn=None).name == "step-0000010"
    assert _rerun(run, 5, 1) == {"step": STEPS, "resumed_from": 10}
    assert _names(run) == ["step-0000020"]
    assert _same(ckpt_io.latest_checkpoint(run), straight)


# --------------------------------------------------------------------------- on-disk states


def _save(run: Path, step: int, value: float, keep: int = 0) -> Path:
    sd = {"w": torch.full((4,), value)}
    return ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, {}, {}, keep)


def test_interrupted_resave_with_a_damaged_new_folder_restores_the_old_one(tmp_path):
    """The state a kill between the renames leaves, with the new folder damaged afterwards:
    the old folder comes back as it was; a pruned folder is never brought back."""
    run = tmp_path / "run"
    _save(run, 1, 1.0)
    old = _save(run, 2, 2.0)
    root = ckpt_io.checkpoints_dir(run)
    new = root / ".tmp-step-0000002-77"
    shutil.copytree(old, new)
    (new / "state.json").unlink()  # not complete: never used
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    os.replace(old, root / ".tmp-old-step-0000002-77")
    shutil.copytree(root / "step-0000001", root / ".tmp-pruned-step-0000001-77")
    shutil.rmtree(root / "step-0000001")

    ckpt_io.remove_stale_temporaries(run)
    assert _names(run) == ["step-0000002"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert ckpt_io.latest_checkpoint(run, warn=None) == old
