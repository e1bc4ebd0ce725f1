"""A ``kill -9`` at every instant of a checkpoint save, a re-save of an existing step folder and
the pruning of old ones, followed by a clean rerun (DESIGN.md §6): the rerun resumes from the
newest complete checkpoint, bit-identically, and never loses the only complete one.

Real subprocesses of the toy training script are killed (SIGKILL) at a precise point of
``save_checkpoint`` by ``REPACKCTL_TEST_CKPT_KILL``; the clean rerun resumes what the killed
process left in this process, under one thread like the script (no import of torch in a second
process for it). A step is re-saved when resume skipped its
folder (here: a corrupted newest checkpoint, as a damaged disk or copy leaves it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
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


def _killed(run: Path, every: int, keep: int, kill: str) -> None:
    """The toy training script as a real process, SIGKILLed at ``kill`` (a
    ``REPACKCTL_TEST_CKPT_KILL``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env[ckpt_io.KILL_ENV] = kill
    cmd = [sys.executable, str(SCRIPT), *_argv(run, every, keep)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def _train(run: Path, every: int, keep: int):
    """The toy script's run in this process, under one thread like the script's processes."""
    args = toy.parse(_argv(run, every, keep))
    with one_torch_thread():
        return train(toy.task_from_args(args), toy.config_from_args(args))


def _rerun(run: Path, every: int, keep: int, capfd: pytest.CaptureFixture[str]) -> dict:
    """A clean rerun to the end after the kill, in this process (the kill is the real process;
    the rerun only reads what it left, as the refine kill tests rerun); returns its summary
    (``step``, ``resumed_from``) as the script prints it."""
    assert ckpt_io.KILL_ENV not in os.environ
    capfd.readouterr()
    result = _train(run, every, keep)
    assert "Traceback" not in capfd.readouterr().err
    return {"step": result.step, "resumed_from": result.resumed_from}


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
def finished_src(tmp_path_factory) -> Callable[[int, int], Path]:
    """``src(every, keep)``: a finished uninterrupted run saved every ``every`` steps keeping
    ``keep``, trained once per module, in-process (only the state before the kill; each kill is
    a real process). Tests copy it, never write into it."""
    done: dict[tuple[int, int], Path] = {}

    def src(every: int, keep: int) -> Path:
        if (every, keep) not in done:
            run = tmp_path_factory.mktemp(f"finished-{every}-{keep}") / "run"
            result = _train(run, every, keep)
            assert (result.step, result.resumed_from) == (STEPS, None)
            done[(every, keep)] = run
        return done[(every, keep)]

    return src


@pytest.fixture(scope="module")
def straight(finished_src) -> Path:
    """The final checkpoint of an uninterrupted run (the one ``finished(run, 5, 0)`` copies:
    the same arguments, so the same weights as a separate run of them)."""
    final = ckpt_io.latest_checkpoint(finished_src(5, 0), warn=None)
    assert final is not None and final.name == f"step-{STEPS:07d}"
    return final


@pytest.fixture(scope="module")
def finished(finished_src):
    """``copy(run, every, keep)``: ``run`` becomes a copy of ``finished_src(every, keep)``."""

    def copy(run: Path, every: int, keep: int) -> None:
        shutil.copytree(finished_src(every, keep), run)

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
    tmp_path, straight, finished, point, resumed_from, capfd
):
    """Only the final step is saved and its folder is corrupt: the rerun starts over and
    re-saves it. A kill between the renames left no ``step-`` folder and the old code deleted
    both temporaries, the only complete checkpoint among them, so the run started over again."""
    run = tmp_path / "run"
    finished(run, STEPS, 1)
    _corrupt_newest(run)
    _killed(run, STEPS, 1, point)
    pid_free = [n.rsplit("-", 1)[0] for n in _names(run)]
    if point == "aside":  # the damaged folder at its kept name (not deleted: ``_resave``)
        assert pid_free == [".tmp-step-0000020", "damaged-step-0000020"]

    assert _rerun(run, STEPS, 1, capfd) == {"step": STEPS, "resumed_from": resumed_from}
    # temporaries gone, nothing else deleted; the damaged folder kept
    assert _names(run) == ["damaged-step-0000020-1", "step-0000020"]
    assert _same(ckpt_io.latest_checkpoint(run), straight)


@pytest.mark.slow
def test_resave_after_a_resume_survives_a_kill_between_the_renames(
    tmp_path, straight, finished, capfd
):
    """Resumed from step 15 past a corrupt step 20: killed between the renames of the re-save
    of 20, the rerun goes on from the new step 20 (complete, fsynced), not from 15."""
    run = tmp_path / "run"
    finished(run, 5, 0)
    _corrupt_newest(run)
    _killed(run, 5, 0, f"aside@{STEPS}")
    assert "step-0000020" not in _names(run)
    assert _rerun(run, 5, 0, capfd) == {"step": STEPS, "resumed_from": STEPS}
    kept = ["damaged-step-0000020-1"]
    assert _names(run) == kept + [f"step-{s:07d}" for s in (5, 10, 15, 20)]
    assert _same(ckpt_io.checkpoints_dir(run) / "step-0000020", straight)


# --------------------------------------------------------------------------- rotation


@pytest.mark.slow
def test_rotation_keeps_the_checkpoint_just_written_next_to_a_skipped_newer_one(
    tmp_path, straight, finished, capfd
):
    """keep_last=1 with a corrupt step 20 ahead: the old rotation kept only that folder and
    deleted each checkpoint the resumed run wrote, so a kill sent the run back to step 0."""
    run = tmp_path / "run"
    finished(run, 5, 1)
    assert _names(run) == ["step-0000020"]
    _corrupt_newest(run)
    _killed(run, 5, 1, "written@15")  # saves 5 and 10 done, 15 being written
    assert [n for n in _names(run) if n.startswith("step-")] == ["step-0000010", "step-0000020"]
    assert _rerun(run, 5, 1, capfd) == {"step": STEPS, "resumed_from": 10}
    assert _names(run) == ["damaged-step-0000020-1", "step-0000020"]
    assert _same(ckpt_io.latest_checkpoint(run), straight)


@pytest.mark.slow
def test_kill_while_pruning_leaves_no_half_deleted_step_folder(tmp_path, straight, capfd):
    """A pruned folder is renamed before it is deleted: a kill leaves a temporary that the
    rerun removes, never a damaged ``step-`` folder that stays forever."""
    run = tmp_path / "run"
    _killed(run, 5, 1, "pruning@5")  # saving 10 prunes 5
    pid_free = [n.rsplit("-", 1)[0] for n in _names(run)]
    assert pid_free == [".tmp-pruned-step-0000005", "step"]
    assert ckpt_io.latest_checkpoint(run, warn=None).name == "step-0000010"
    assert _rerun(run, 5, 1, capfd) == {"step": STEPS, "resumed_from": 10}
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
