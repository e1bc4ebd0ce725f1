"""`runs rm` asks about every step folder it deletes. Its question counted complete checkpoints
only ("0 checkpoints") while it deleted incomplete, damaged and marked-bad ones too, whose
weights may be intact. Now it names them beside the complete ones."""

from __future__ import annotations

import shutil

from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.train.checkpoint import list_checkpoints


def test_the_question_counts_the_step_folders_that_are_not_complete(tmp_path_factory, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(f"{shared_stack(tmp_path_factory)['runs']}/pack-tiny", root / "pack-tiny")
    steps = list_checkpoints(root / "pack-tiny")
    (steps[-1] / "optim.pt").unlink()  # the newest step folder is incomplete now
    res = CliRunner().invoke(app, ["runs", "rm", "pack-tiny", "--runs", str(root)], input="n\n")
    out = " ".join(res.output.split())
    good = len(steps) - 1
    named = f"{good} checkpoint{'' if good == 1 else 's'} and 1 incomplete, damaged or marked bad"
    assert named in out and "nothing removed" in out, out
    assert (root / "pack-tiny").is_dir()
