"""`runs rm` refuses files that only have the names of repackctl's files (session 37 audit C #6).

Ownership was decided by name patterns: a copied ``tb/events.out.tfevents.*``, an
``images/step-0000999.png`` in a 4-step run, ``recon-my-notes.json`` in a checkpoint and a
``step-0000099/state.json`` of the user's were deleted with the run. Now the run's own records
decide: its last step (no grid or checkpoint folder past it), a checkpoint folder's
``state.json`` that verifies (or its weights, where a damaged one does not), a report whose
content is an `evaluate` report, and the TensorBoard writers the run records (host and pid,
``tb/writers.jsonl``). Everything repackctl writes is still removed (the kill leftovers are
covered by test_run_folder_ownership.py).

A real 4-step pack run (extract → pack train → pack encode at toy size).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_packed_cache, use_roots
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

from repackctl.run_files import EVENTS_NAME, TB_WRITERS, foreign_paths, record_tb_writer

STEP = "step-0000004"  # the pack run's checkpoint (4 steps)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lookalikes")
    shared_packed_cache(tmp_path_factory, root / "cache", 32)
    return root


@pytest.fixture
def run(base, tmp_path, monkeypatch) -> Path:
    return use_roots(base, tmp_path, monkeypatch) / "runs" / "pk"


pytestmark = pytest.mark.usefixtures("one_thread")


def _refused_naming(run: Path, path: Path) -> None:
    before = snapshot(run)
    out = cli_refused(7, "runs", "rm", "pk", "--yes")
    assert "1 path(s) that repackctl did not write" in out and str(path) in out, out
    assert snapshot(run) == before


def test_a_grid_of_a_step_after_the_last_is_the_users(run):
    (run / "images").mkdir(exist_ok=True)
    mine = run / "images" / "step-0000999.png"
    mine.write_bytes(b"\x89PNG mine")
    (run / "images" / "step-0000004.png").write_bytes(b"png")  # a step the run reached: ours
    _refused_naming(run, mine)
    mine.unlink()
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


def test_a_step_folder_that_is_no_checkpoint_of_the_run_is_the_users(run):
    for name in ("step-0000099", "step-0000003"):  # past the last step; a state.json of mine
        fake = run / "checkpoints" / name
        fake.mkdir()
        (fake / "state.json").write_text("mine")
        _refused_naming(run, fake)
        (fake / "state.json").unlink()
        fake.rmdir()
    # a damaged checkpoint of the run (its state.json cut short, its weights there) still goes
    state = run / "checkpoints" / STEP / "state.json"
    state.write_text(state.read_text()[:40])
    assert foreign_paths(run) == []
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


def test_a_report_named_file_that_is_no_report_is_the_users(run):
    ckpt = run / "checkpoints" / STEP
    mine = ckpt / "recon-my-notes.json"
    mine.write_text("mine")
    _refused_naming(run, mine)
    mine.write_text(json.dumps({"run": "pk", "checkpoint": str(run / "checkpoints" / "x")}))
    _refused_naming(run, mine)  # a report of another checkpoint
    mine.write_text(json.dumps({"run": "pk", "checkpoint": str(ckpt), "psnr": 1.0}))
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


def test_events_of_a_process_the_run_does_not_record_are_the_users(run):
    events = sorted((run / "tb").rglob("events.out.tfevents.*"))
    assert events, list(run.rglob("*"))
    m = EVENTS_NAME.fullmatch(events[0].name)
    assert m is not None
    when, host, pid = int(m.group(1)), m.group(2), int(m.group(3))
    recorded = [json.loads(x) for x in (run / TB_WRITERS).read_text().splitlines()]
    assert [(r["host"], r["pid"]) for r in recorded] == [(host, pid)]  # the training's record
    assert recorded[0]["time"] <= when
    assert foreign_paths(run) == []  # the run's own events
    mine = run / "tb" / f"events.out.tfevents.{when + 60}.{host}.{pid + 1}.0"
    mine.write_bytes(events[0].read_bytes())  # another run's events, copied in to compare
    _refused_naming(run, mine)
    mine.unlink()
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


def test_the_record_is_the_processs_own_host_and_pid(tmp_path):
    import os
    import socket

    record_tb_writer(tmp_path)
    record_tb_writer(tmp_path)
    lines = [json.loads(x) for x in (tmp_path / TB_WRITERS).read_text().splitlines()]
    assert [(r["host"], r["pid"]) for r in lines] == [(socket.gethostname(), os.getpid())] * 2
