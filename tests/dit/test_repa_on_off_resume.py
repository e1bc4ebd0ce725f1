"""`train dit` resumed with REPA switched off or on (``--repa-weight`` to or from 0, allowed with
``--allow-change repa_weight``).

Switched off, the run crashed with a traceback (``ValueError: loaded state dict contains a
parameter group that doesn't match``: the checkpoint's optimizer state covers the projector).
Switched on, it was refused as a damaged checkpoint ("projector.safetensors is missing / pass a
complete checkpoint folder"), where the checkpoint is complete. Both are now refused before
anything is written, naming the setting, and the hint's way (``--repa-stop-step``) trains on.
The allowed change is refused by the settings layer, before any model is built (audit s37 B
finding 3), as without ``--allow-change``; ``dit.run.check_repa_resumable`` stays behind it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import ResumeConflict

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.lock"
    }


def test_repa_switched_on_or_off_at_resume_is_refused_naming_the_setting(
    tmp_path: Path, tmp_path_factory
) -> None:
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    dit = ["train", "dit", "-b", "4", "--image-every", "0", "--device", "cpu", *roots]
    cli_ok(*dit, "--name", "with", "--steps", "2", "--ckpt-every", "2")
    cli_ok(*dit, "--name", "without", "--steps", "2", "--ckpt-every", "2", "--repa-weight", "0")
    allow = ["--steps", "3", "--allow-change", "repa_weight"]
    for name, weight, said in (
        ("with", "0", "dit.repa_weight: 0.5 → 0.0"),  # HEAD: a ValueError traceback
        ("without", "0.5", "dit.repa_weight: 0.0 → 0.5"),  # "projector.safetensors is missing"
    ):
        run = tmp_path / "runs" / name
        before = _files(run)
        out = cli_refused(
            ResumeConflict.exit_code, *dit, "--name", name, *allow, "--repa-weight", weight
        )
        assert said in out and "dit.repa_weight cannot change on resume" in out, out
        assert "REPA projector" in out, out
        assert "complete checkpoint folder" not in out, out
        assert _files(run) == before
    # the way the hint names switches the alignment off from a step on
    out = cli_ok(*dit, "--name", "with", "--steps", "3", "--repa-stop-step", "2",
                 "--allow-change", "repa_stop_step")  # fmt: skip
    assert "repa_stop_step: None → 2 (allowed by --allow-change)" in out, out
    assert (tmp_path / "runs" / "with" / "checkpoints" / "step-0000003").is_dir()
