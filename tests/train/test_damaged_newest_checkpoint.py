"""A run's newest checkpoint damaged after it was written (``state.json`` edited, cut or removed,
a file removed) is refused by loading (`sample --run`, `--refiner`, `pack encode --run`,
`evaluate`: ``checkpoint_for_loading``) with an ``Error:`` naming the folder and the file and a
``Hint:`` naming the newest intact one; it used to be dropped silently and the previous
checkpoint sampled in its place (audit D, finding 1). Temporaries a kill left (a save, a
re-save, a pruning) and folders marked bad by their writer are still passed over, and resume
still falls back with a warning.

Checkpoints are written by the real writer (``save_checkpoint``, tiny tensors); the CLI cases
sample the shared stage stack (tests/support/stack.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support.ckpt_state import write_state
from support.cli import cli_ok, cli_refused
from support.stack import make_dit_run, save_refiner_run, shared_stack

from repackctl.errors import CheckpointError
from repackctl.train import checkpoint as ckpt_io

OLDER, NEWEST = "step-0000001", "step-0000002"
CPU = ["--device", "cpu"]


def _run(root: Path, steps: tuple[int, ...] = (1, 2)) -> Path:
    """A run with intact checkpoints at ``steps``, each of a module beside model and ema."""
    run = root / "r"
    for step in steps:
        sd = {"w": torch.full((64,), float(step))}
        weights = {"model": sd, "ema": sd, "disc": sd}
        ckpt_io.save_checkpoint(run, step, weights, {"lr": 0.1}, {"extra": {"stage": "pack"}})
    return run


def _edit_step(folder: Path) -> None:
    state = folder / "state.json"
    doc = json.loads(state.read_text())
    doc["step"] -= 1  # the audit's edit: the seal no longer matches
    state.write_text(json.dumps(doc))


DAMAGE = {
    "state edited": (_edit_step, "state.json does not match the sha256"),
    "state cut": (
        lambda f: (f / "state.json").write_text((f / "state.json").read_text()[:40]),
        "state.json is not valid JSON",
    ),
    "state removed": (lambda f: (f / "state.json").unlink(), "state.json is missing"),
    "module removed": (lambda f: (f / "disc.safetensors").unlink(), "disc.safetensors is missing"),
    "optim removed": (lambda f: (f / "optim.pt").unlink(), "optim.pt is missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_refused_not_replaced(tmp_path, case):
    damage, said = DAMAGE[case]
    run = _run(tmp_path)
    newest = run / "checkpoints" / NEWEST
    damage(newest)
    with pytest.raises(CheckpointError) as e:
        ckpt_io.checkpoint_for_loading(run)
    assert f"checkpoint {NEWEST}, the newest of run r, is damaged" in e.value.message
    assert said in e.value.message and str(newest) in e.value.message
    older = run / "checkpoints" / OLDER
    assert f"pass its folder {older}" in e.value.hint and f"--pack-run {older}" in e.value.hint
    assert "--checkpoint" not in e.value.hint  # a pack run: it would pick the DiT's checkpoint
    assert f"move it out of {newest.parent}" in e.value.hint
    assert ckpt_io.checkpoint_for_loading(older) == older  # the hint's folder loads
    # resume (the engine) still falls back to the older one, and says why
    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(run, warn=warnings.append) == older
    assert warnings and warnings[0].startswith(f"skipping checkpoint {NEWEST}")


def test_kill_leftovers_and_marked_bad_folders_are_passed_over(tmp_path):
    """What a kill leaves (a temporary being written, one a re-save set aside, one a pruning
    renamed) and a folder its writer marked bad are no checkpoint to refuse; an older folder
    half-deleted by an earlier version's pruning lies behind the intact one it kept."""
    run = _run(tmp_path, (1, 2))
    root = run / "checkpoints"
    (root / OLDER / "state.json").unlink()  # half-deleted by a pruning (earlier versions)
    for name in (".tmp-step-0000004-77", ".tmp-old-step-0000003-77", ".tmp-pruned-step-0000000-7"):
        shutil.copytree(root / NEWEST, root / name)
        (root / name / "ema.safetensors").unlink()  # partial
    sd = {"w": torch.zeros(64)}
    ckpt_io.save_checkpoint(run, 3, {"model": sd, "ema": sd}, {}, {}, good=False)
    assert ckpt_io.checkpoint_for_loading(run) == root / NEWEST

    (root / NEWEST / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:  # it used to say the run had no checkpoint
        ckpt_io.checkpoint_for_loading(run)
    assert f"{root / NEWEST / 'model.safetensors'} is missing" in e.value.message
    assert "the run has no other intact checkpoint" in e.value.hint


def test_a_checkpoint_folder_without_its_state_is_refused_not_read_as_a_run(tmp_path):
    folder = _run(tmp_path) / "checkpoints" / NEWEST
    (folder / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        ckpt_io.checkpoint_for_loading(folder)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _second_checkpoint(ckpt: Path, step: int) -> Path:
    """Save the checkpoint ``ckpt`` again as step ``step`` of its run (a newer one)."""
    extra = ckpt_io.read_state(ckpt)["extra"]
    weights = {n: ckpt_io.load_weights(ckpt, n) for n in ("model", "ema")}
    return ckpt_io.save_checkpoint(ckpt.parent.parent, step, weights, {}, {"extra": extra})


def test_sample_refuses_a_run_whose_newest_state_was_edited(stack, tmp_path):
    older = make_dit_run(stack["runs"], "dit-edited", seed=4)  # step 5
    newest = _second_checkpoint(older, 7)
    state = json.loads((newest / "state.json").read_text())
    state["step"] = 6
    (newest / "state.json").write_text(json.dumps(state))
    roots = ["--runs", stack["runs"], "--samples", str(tmp_path / "samples"), *CPU]
    sample = ["sample", "-r", "dit-edited", "-n", "2", "--steps", "2", "--grid", "0", *roots]
    out = cli_refused(CheckpointError.exit_code, *sample)
    assert "checkpoint step-0000007, the newest of run dit-edited, is damaged" in out
    assert "state.json does not match the sha256" in out and "--checkpoint step-0000005" in out
    assert not (tmp_path / "samples").exists()  # nothing sampled from step 5 in its place
    cli_ok(*sample, "--checkpoint", "step-0000005")  # the hint, followed
    assert [p.name for p in (tmp_path / "samples").iterdir()][0].startswith(
        "dit-edited--step-0000005"
    )


def test_sample_refuses_a_refiner_whose_newest_state_was_edited(stack, tmp_path):
    older = save_refiner_run(stack["runs"], "ref-edited", resolution=32)  # step 2
    newest = _second_checkpoint(older, 4)
    state = json.loads((newest / "state.json").read_text())
    write_state(newest / "state.json", state | {"step": 3}, sealed=False)  # no seal to fail
    roots = ["--runs", stack["runs"], "--samples", str(tmp_path / "samples"), *CPU]
    out = cli_refused(
        CheckpointError.exit_code,
        *["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--grid", "0", *roots],
        *["--refiner", "ref-edited"],
    )
    assert "checkpoint step-0000004, the newest of run ref-edited, is damaged" in out
    assert "field step is 3, the folder says 4" in out
    assert f"pass its folder {older}" in out
