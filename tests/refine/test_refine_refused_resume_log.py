"""A `refine train` resume that the engine refuses writes no resume lines to log.txt (s29, G3).

The settings layer accepts a resume, then the engine may still refuse it: here the launcher
asks for another precision (``ACCELERATE_MIXED_PRECISION=bf16``) than the run trained in
(fp32, the default), which the settings layer does not see. The stage's ``resume: setting: old
→ new`` lines reached log.txt before the engine could refuse (fixed by e17507f: the engine logs
them once it accepted the resume); `train dit` had a test, `refine train` none.

Real CLI runs on the shared patchpix stack (a real pack run, real triplets).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.errors import CheckpointError
from repackctl.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_resume_the_engine_refuses_leaves_no_resume_line_in_log_txt(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = shared_stack(tmp_path_factory)
    where = ["--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]
    new = ["--pack-run", "pack-tiny", "--batch-size", "4", "--base-channels", "8"]
    cli_ok("refine", "train", "--name", "rs29", *new, "--gan-weight", "0", "--steps", "1", *where)
    run = Path(stack["runs"]) / "rs29"
    log = (run / "log.txt").read_bytes()
    more = ["refine", "train", "--name", "rs29", "--steps", "2", "--ckpt-every", "7", *where]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = cli_refused(CheckpointError.exit_code, *more)
    assert "trained in fp32" in out and "bf16 (the launcher)" in out, out
    # before e17507f its resume: lines were in log.txt; the triplets line (before training,
    # not a resume line) may be, as the triplets were checked
    added = (run / "log.txt").read_bytes()[len(log) :].decode()
    assert (run / "log.txt").read_bytes().startswith(log)
    assert "resume:" not in added, added
    assert [p.name for p in list_checkpoints(run)] == ["step-0000001"]
    # the same resume under the run's precision: its lines are logged
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    out = cli_ok(*more)
    assert "resume: refine.ckpt_every:" in out and "→ 7" in out, out
    assert "resume: refine.ckpt_every:" in (run / "log.txt").read_text()
