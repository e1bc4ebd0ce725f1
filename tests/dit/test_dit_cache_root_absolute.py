"""`train dit` records its cache root absolute, as `pack train` does.

A README-walk audit trained with ``--cache cache2p`` (relative): the checkpoints recorded
``cache2p`` as typed, so a later command from another folder that holds its own ``cache2p``
(the same entry name, other images) read that cache's entry, and ``runs info`` said
``in cache2p``. New runs record the absolute root; a run recorded with a relative root (an older
version) still resumes as before.

Real CLI runs on a copy of the shared tiny DiT stack.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_tiny_dit_stack
from support.ckpt_state import write_state
from support.cli import cli_ok

from repackctl.train.checkpoint import list_checkpoints, read_state

TRAIN = ["train", "dit", "--pack-run", "pk", "--size", "tiny", "--depth", "2", "-b", "8",
         "--image-every", "0", "--device", "cpu", "--cache", "cache", "--runs", "runs"]  # fmt: skip


@pytest.fixture
def work(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """A copy of the tiny DiT stack (cache/, runs/ with ``pk`` and ``dit``), the working folder."""
    work = shared_tiny_dit_stack(tmp_path_factory, tmp_path / "w")
    monkeypatch.chdir(work)
    return work


def test_a_relative_cache_is_recorded_absolute(work) -> None:
    cli_ok(*TRAIN, "--name", "d2", "--steps", "1")
    ckpt = list_checkpoints(work / "runs" / "d2")[-1]
    assert read_state(ckpt)["extra"]["cache"]["root"] == str(work / "cache")
    out = cli_ok("runs", "info", "d2", "--runs", "runs")
    assert f"in {work / 'cache'}" in out, out


def test_a_run_recorded_with_a_relative_root_still_resumes(work) -> None:
    cli_ok(*TRAIN, "--name", "d3", "--steps", "1")
    ckpt = list_checkpoints(work / "runs" / "d3")[-1]
    state = read_state(ckpt)
    state["extra"]["cache"]["root"] = "cache"  # as an older version recorded it
    write_state(ckpt / "state.json", state)
    cli_ok(*TRAIN, "--name", "d3", "--steps", "2")
    ckpt = list_checkpoints(work / "runs" / "d3")[-1]
    assert ckpt.name == "step-0000002"
    assert read_state(ckpt)["extra"]["cache"]["root"] == str(work / "cache")
