"""A resume past a damaged newest checkpoint re-saves its step: the damaged folder used to be
swapped out and deleted (``save_checkpoint``, audit A item 5), although rotation never deletes a
damaged folder (it may be what the user wants to repair, or what other runs were made from: on
a GPU the re-saved step has other bytes than the pack id its latents and DiT name). It is now
kept, renamed ``damaged-step-…-<n>``, with a warning naming both paths: never listed, loaded or
rotated as a checkpoint, shown by `runs info`, deleted by `runs rm` with the run (the training
moved it there). A re-save over an intact folder still replaces it. A kill between the two
renames leaves the damaged folder at its kept name and the new one restored when it verifies.

The toy training script's run (the real trainer) and the real checkpoint writer (tiny tensors).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from conftest import one_torch_thread
from support import train_toy_script as toy
from support.cli import cli_ok, runner

from repackctl.cli.app import app
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.loop import train

KEPT = "damaged-step-0000020-1"


def _train(run: Path, steps: int) -> object:
    """The toy run, as a refiner run's (``extra.stage``: `runs` lists it)."""
    args = toy.parse([str(run), "--steps", str(steps), "--ckpt-every", "5", "--keep-last", "2"])
    config = replace(toy.config_from_args(args), extra={"stage": "refine"})
    with one_torch_thread():
        return train(toy.task_from_args(args), config)


def _edit_step(folder: Path) -> None:
    """The audit's edit: ``state.json``'s step changed, so its seal no longer matches."""
    state = folder / "state.json"
    doc = json.loads(state.read_text())
    doc["step"] -= 1
    state.write_text(json.dumps(doc))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in ckpt_io.checkpoints_dir(run).iterdir())


def test_a_resume_keeps_the_damaged_checkpoint_it_skipped(tmp_path, capfd) -> None:
    runs = tmp_path / "runs"
    run = runs / "toy"
    _train(run, 20)  # keeps 15, 20
    assert _names(run) == ["step-0000015", "step-0000020"]
    root = ckpt_io.checkpoints_dir(run)
    _edit_step(root / "step-0000020")
    damaged = _files(root / "step-0000020")
    capfd.readouterr()

    result = _train(run, 20)  # resumes from 15 past the damaged 20, re-saves 20
    err = " ".join(capfd.readouterr().err.split())
    assert (result.step, result.resumed_from) == (20, 15)
    assert "skipping checkpoint step-0000020" in err
    assert f"Warning: checkpoint {root / 'step-0000020'} did not verify" in err
    assert f"kept as {root / KEPT}" in err
    # kept byte for byte; not counted by rotation (keep_last 2: 15 and 20 stay)
    assert _names(run) == [KEPT, "step-0000015", "step-0000020"]
    assert _files(root / KEPT) == damaged
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step-0000015", "step-0000020"]
    assert ckpt_io.checkpoint_problem(root / "step-0000020") is None
    assert ckpt_io.latest_checkpoint(run, warn=None) == root / "step-0000020"

    # runs info lists it as kept damaged; runs rm names it in its question and deletes it
    info = cli_ok("runs", "info", "toy", "--runs", str(runs))
    assert f"checkpoint {KEPT} kept damaged: the step-0000020 that resume skipped" in info
    shown = json.loads(cli_ok("runs", "info", "toy", "--runs", str(runs), "--json"))
    assert [c["name"] for c in shown["checkpoints"] if not c["complete"]] == [KEPT]
    asked = runner.invoke(app, ["runs", "rm", "toy", "--runs", str(runs)], input="n\n")
    question = " ".join(asked.output.split())
    assert "2 checkpoints and 1 incomplete, damaged or marked bad" in question, question
    assert "nothing removed" in question and (root / KEPT).is_dir()
    assert "removed" in cli_ok("runs", "rm", "toy", "--runs", str(runs), "--yes")
    assert not run.exists()


def _save(run: Path, step: int, value: float) -> Path:
    sd = {"w": torch.full((4,), value)}
    return ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, {}, {})


def test_an_intact_folder_is_replaced_and_each_damaged_one_kept(tmp_path) -> None:
    """Re-saving over an intact folder replaces it as before; each damaged one is kept under
    the next free number, never rotated away (keep_last 1 keeps only the new step 2)."""
    run = tmp_path / "run"
    root = ckpt_io.checkpoints_dir(run)
    _save(run, 2, 1.0)
    _save(run, 2, 2.0)
    assert _names(run) == ["step-0000002"]
    kept = []
    for value in (3.0, 4.0):
        _edit_step(root / "step-0000002")
        kept.append(_files(root / "step-0000002"))
        _save(run, 2, value)
    sd = {"w": torch.full((4,), 5.0)}
    ckpt_io.save_checkpoint(run, 3, {"model": sd, "ema": sd}, {}, {}, keep_last=1)
    assert _names(run) == ["damaged-step-0000002-1", "damaged-step-0000002-2", "step-0000003"]
    assert [_files(root / f"damaged-step-0000002-{n}") for n in (1, 2)] == kept


def test_a_kill_between_the_renames_keeps_the_damaged_folder(tmp_path) -> None:
    """The state a kill at ``aside`` leaves (the damaged folder at its kept name, the new one
    still a temporary): the next run puts the new folder in place when it verifies, deletes it
    when it does not, and keeps the damaged one either way."""
    for new_ok in (True, False):
        run = tmp_path / f"run-{new_ok}"
        root = ckpt_io.checkpoints_dir(run)
        _save(run, 1, 1.0)
        old = _save(run, 2, 2.0)
        _edit_step(old)
        damaged = _files(old)
        new = root / ".tmp-step-0000002-4242"
        shutil.copytree(_save(tmp_path / f"other-{new_ok}", 2, 3.0), new)
        if not new_ok:
            (new / "optim.pt").unlink()
        old.rename(root / "damaged-step-0000002-1")  # as ``kept_damaged_name`` names it

        ckpt_io.remove_stale_temporaries(run)
        expected = ["damaged-step-0000002-1", "step-0000001"]
        assert _names(run) == sorted([*expected, *(["step-0000002"] if new_ok else [])])
        assert _files(root / "damaged-step-0000002-1") == damaged
        newest = ckpt_io.latest_checkpoint(run, warn=None)
        assert newest is not None and newest.name == ("step-0000002" if new_ok else "step-0000001")
