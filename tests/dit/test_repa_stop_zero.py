"""`--repa-stop-step 0` with REPA on: the alignment is switched off from step 0, so it never
ran, while the run recorded REPA and its summary showed a `REPA features` row. Now refused
before anything is written (`--repa-weight 0` trains without REPA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_refused


@pytest.mark.parametrize("stage", ["dit", "t2i"])
def test_a_repa_stop_step_of_zero_is_refused(stage: str, tmp_path: Path) -> None:
    # the autouse sandbox sets the cache and runs roots under tmp_path
    args = ("train", stage, "--repa-stop-step", "0", "--name", "r", "--device", "cpu")
    out = cli_refused(2, *args)
    assert f"{stage}.repa_stop_step = 0 (from flag) switches REPA off" in out, out
    assert "--repa-weight 0" in out, out
    assert not (tmp_path / "runs" / "r").exists()
