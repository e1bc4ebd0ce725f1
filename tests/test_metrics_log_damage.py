"""A damaged ``metrics.jsonl`` (a byte that is not UTF-8) no longer stops its run with a traceback.

A run's metric log is read back by every resume (which drops the lines of the steps after the
checkpoint) and by a training with nothing left to train (its last losses). Both read the file
as UTF-8 text in one piece: one damaged byte anywhere was a ``UnicodeDecodeError`` traceback,
and the run could not be trained on. The damaged line is now skipped by the readers, as a line a
kill cut is, and kept as it is by the resume (nothing already written is lost); the line a kill
cut (the last, without its newline) is still dropped.

Real components: the shared toy stack's `pack train` run (tests/support/stack.py), copied, and
`repackctl pack train` / `runs info` through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import use_roots
from support.cli import cli_ok
from support.stack import shared_stack

RUN = "pack-tiny"
#: the settings tests/support/stack.py trained the run with
PACK = ["pack", "train", "-e", "patchpix", "--resolution", "32", "-n", "16", "--batch-size", "4"]
PACK += ["-c", "4", "--ch", "8", "--disc-channels", "8", "-r", RUN, "--ckpt-every", "2"]
PACK += ["--device", "cpu"]


@pytest.fixture
def run_dir(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    base = Path(shared_stack(tmp_path_factory)["runs"]).parent
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    return use_roots(base, tmp_path, monkeypatch) / "runs" / RUN


def test_a_damaged_line_is_skipped_and_kept(run_dir):
    log = run_dir / "metrics.jsonl"
    data = bytearray(log.read_bytes())
    assert json.loads(data.splitlines()[0])["step"] == 2
    data[30] = 0xFF  # inside the first (step 2) line: not UTF-8 any more
    damaged = bytes(data.splitlines()[0])
    log.write_bytes(bytes(data) + b'{"step": 3, "loss/l1": 0.5')  # and a line a kill cut
    out = cli_ok(*PACK, "--steps", "2")  # nothing to train: its last losses are read
    assert "nothing to train" in out
    cli_ok(*PACK, "--steps", "4")  # a resume: the lines after step 2 are dropped
    lines = log.read_bytes().splitlines()
    assert lines[0] == damaged  # kept as it was
    assert [json.loads(line)["step"] for line in lines[1:]] == [4]  # the cut line is gone
    assert "Traceback" not in cli_ok("runs", "info", RUN)
