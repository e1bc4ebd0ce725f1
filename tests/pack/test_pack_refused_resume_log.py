"""A `pack train` resume that the engine refuses writes no resume lines to log.txt (s29, G3).

The settings layer accepts a resume, then the engine may still refuse it: here the launcher
asks for another precision (``ACCELERATE_MIXED_PRECISION=bf16``) than the run trained in
(fp32, the default), which the settings layer does not see. The stage's ``resume: setting: old
→ new`` lines reached log.txt before the engine could refuse (fixed by e17507f: the engine logs
them once it accepted the resume); `train dit` had a test, `pack train` none.

Real CLI runs on a real cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import cli_pack_stack
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError
from repackctl.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_resume_the_engine_refuses_leaves_no_resume_line_in_log_txt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, runs = cli_pack_stack(tmp_path, val=None)  # pk: 1 step
    run = tmp_path / "runs" / "pk"
    log = (run / "log.txt").read_bytes()
    more = ["pack", "train", "--name", "pk", "--steps", "2", "--ckpt-every", "7", "--device"]
    more += ["cpu", *cache, *runs]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = cli_refused(CheckpointError.exit_code, *more)
    assert "trained in fp32" in out and "bf16 (the launcher)" in out, out
    added = (run / "log.txt").read_bytes()[len(log) :].decode()
    assert "resume:" not in added, added  # before e17507f: its resume: lines
    assert (run / "log.txt").read_bytes() == log  # nothing else either
    assert [p.name for p in list_checkpoints(run)] == ["step-0000001"]
    # the same resume under the run's precision: its lines are logged
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    out = cli_ok(*more)
    assert "resume: pack.ckpt_every: 500 → 7" in out, out
    assert "resume: pack.ckpt_every: 500 → 7" in (run / "log.txt").read_text()
