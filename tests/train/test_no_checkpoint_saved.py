"""A training command that trained steps but saved no checkpoint (each of its save points came
after non-finite steps: the save policy skipped it) ends with a ``TrainingError`` (`Error:` +
`Hint:`, exit 8), not exit 0: `train dit --lr 1e10 && sample …` used to go on with no checkpoint,
or with an older one (audit D, finding 10). A run that saved an earlier checkpoint of this
command, and a resume with nothing left to train, still end normally.

The engine cases train the toy task of ``train_toy_script`` in-process; the CLI case trains a tiny
DiT on a copy of the shared stage stack.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support import train_toy_script as toy
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.errors import TrainingError
from repackctl.train import checkpoint as ckpt_io
from repackctl.train import train


def _config(run: Path, steps: int, **kw):
    base = dict(steps=steps, global_batch=8, ckpt_every=2, log_every=1, block=4, buffer_blocks=2)
    return toy.make_config(str(run), **{**base, "cpu": True, "lr": 1e-2, **kw})


def _steps(run: Path) -> list[str]:
    return [p.name for p in ckpt_io.list_checkpoints(run)]


def test_a_run_whose_every_save_point_was_non_finite_is_an_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as e:  # steps 1 and 3 are non-finite: saves at 2, 4 skipped
        train(toy.ToyTask(nan_steps=frozenset({0, 2})), _config(run, 4))
    assert "trained 4 step(s), to step 4, but saved no checkpoint" in e.value.message
    assert (
        "the run has no checkpoint" in e.value.message and str(run / "log.txt") in e.value.message
    )
    assert "--allow-change" in e.value.hint and "learning rate" in e.value.hint
    assert _steps(run) == [] and (run / "metrics.jsonl").is_file()  # the log is kept

    # the hint, followed: the same run, trained again with finite steps, saves and ends
    result = train(toy.ToyTask(), _config(run, 4))
    assert result.checkpoint is not None and _steps(run) == ["step-0000002", "step-0000004"]


def test_a_resume_that_saved_nothing_names_the_checkpoint_it_resumed_from(tmp_path):
    run = tmp_path / "run"
    train(toy.ToyTask(), _config(run, 2))
    with pytest.raises(TrainingError) as e:  # the 4th step is non-finite: the save at 4 skipped
        train(toy.ToyTask(nan_steps=frozenset({3})), _config(run, 4))
    assert "trained 2 step(s), to step 4, but saved no checkpoint" in e.value.message
    assert "its newest checkpoint is still step-0000002, where it resumed" in e.value.message
    assert _steps(run) == ["step-0000002"]

    # as before: nothing left to train is no error; nor is a run whose last save point alone
    # was skipped, as it saved an earlier one (its result names that one)
    assert train(toy.ToyTask(), _config(run, 2)).checkpoint == run / "checkpoints" / "step-0000002"
    result = train(toy.ToyTask(nan_steps=frozenset({4})), _config(tmp_path / "late", 6))
    assert result.step == 6 and result.checkpoint.name == "step-0000004"


def test_train_dit_with_a_diverging_lr_exits_non_zero(tmp_path_factory, tmp_path):
    stack = shared_stack(tmp_path_factory)
    shutil.copytree(stack["cache"], tmp_path / "cache")
    shutil.copytree(stack["runs"], tmp_path / "runs")
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    flags = ["--size", "tiny", "-b", "8", "--image-every", "0", "--ckpt-every", "2", *roots]
    with one_torch_thread():
        cli_ok("pack", "encode", "--run", "pack-tiny", *roots, "--device", "cpu")
        out = cli_refused(
            TrainingError.exit_code,
            *["train", "dit", *flags, "--steps", "2", "--lr", "1e10", "--name", "d"],
            "--device",
            "cpu",
        )
    assert "run d trained 2 step(s), to step 2, but saved no checkpoint" in out
    assert not ckpt_io.list_checkpoints(tmp_path / "runs" / "d")
    assert "saved no checkpoint" in (tmp_path / "runs" / "d" / "log.txt").read_text()
