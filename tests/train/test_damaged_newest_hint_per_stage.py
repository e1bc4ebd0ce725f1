"""The hint of a run whose newest checkpoint is damaged names what works for that run's kind
(audit A of session 37, finding 2): it used to end every stage's hint with "(or `--checkpoint
step-N` with `sample --run`)", which, given for a refiner (`sample --run dit --refiner ref`)
or a pack run, picks a checkpoint of the DiT instead. ``--checkpoint`` is named only for the
runs `sample --run` takes (DiT, text-to-image); a refiner's hint names ``--refiner FOLDER``, a
pack run's ``--run FOLDER`` / ``--pack-run FOLDER``, and followed it samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.ckpt_state import write_state
from support.cli import cli_ok, cli_refused
from support.stack import save_refiner_run, shared_stack

from repackctl.errors import CheckpointError
from repackctl.train import checkpoint as ckpt_io

OLDER, NEWEST = "step-0000001", "step-0000002"


def _damaged_run(root: Path, stage: str) -> Path:
    """A run of ``stage`` with intact checkpoints 1 and 2, step 2's ``state.json`` edited."""
    run = root / stage
    for step in (1, 2):
        sd = {"w": torch.full((8,), float(step))}
        extra = {"extra": {"stage": stage}}
        ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, {}, extra)
    state = run / "checkpoints" / NEWEST / "state.json"
    state.write_text(json.dumps(json.loads(state.read_text()) | {"step": 1}))
    return run


WANTED = {
    "dit": ("`--run {older}` with `sample`", "`--checkpoint step-0000001` with `sample --run`"),
    "t2i": ("`--run {older}` with `sample`", "`--checkpoint step-0000001` with `sample --run`"),
    "refine": ("`--refiner {older}` with `sample` or `refine apply`",),
    "pack": ("`--run {older}` with `pack encode`", "`--pack-run {older}` with `refine train`"),
}


@pytest.mark.parametrize("stage", list(WANTED))
def test_the_hint_names_the_flag_of_the_run_kind(tmp_path, stage):
    run = _damaged_run(tmp_path, stage)
    older = run / "checkpoints" / OLDER
    with pytest.raises(CheckpointError) as e:
        ckpt_io.checkpoint_for_loading(run)
    assert f"pass its folder {older} in place of the run" in e.value.hint
    for wanted in WANTED[stage]:
        assert wanted.format(older=older) in e.value.hint, e.value.hint
    if stage in ("refine", "pack"):
        assert "--checkpoint" not in e.value.hint, e.value.hint


def test_a_damaged_refiner_hint_followed_samples(tmp_path_factory, tmp_path):
    stack = shared_stack(tmp_path_factory)
    older = save_refiner_run(stack["runs"], "ref-hint", resolution=32)  # step 2
    extra = ckpt_io.read_state(older)["extra"]
    weights = {n: ckpt_io.load_weights(older, n) for n in ("model", "ema")}
    newest = ckpt_io.save_checkpoint(older.parent.parent, 4, weights, {}, {"extra": extra})
    state = json.loads((newest / "state.json").read_text())
    write_state(newest / "state.json", state | {"step": 3}, sealed=False)
    roots = ["--runs", stack["runs"], "--samples", str(tmp_path / "samples"), "--device", "cpu"]
    sample = ["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--grid", "0", *roots]
    out = cli_refused(CheckpointError.exit_code, *sample, "--refiner", "ref-hint")
    flat = " ".join(out.split())
    assert f"`--refiner {older}` with `sample`" in flat, out
    assert "--checkpoint" not in flat, out  # it picked a checkpoint of the DiT
    cli_ok(*sample, "--refiner", str(older))  # the hint, followed
