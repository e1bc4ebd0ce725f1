"""`train dit` writes its resume lines to the run's log.txt, as `pack train` and `refine train`.

The lines that say what a resume changed (``resume: setting: old → new``), what
``--allow-change`` let through and which started values it kept went only to stderr: the run's
own record of its history (log.txt) did not say its lr changed half-way. They are now logged
through the run's log file (``train.logging.log_lines``); a run with nothing left to train
shows them and writes nothing (as the other commands). `train t2i` resumes through the same
function (``dit.run.resume_and_train``). Real CLI runs on a real cache with packed latents.
"""

from __future__ import annotations

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")

DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--device", "cpu", "--image-every", "0"]
DIT += ["--name", "d"]


def test_resume_lines_go_to_log_txt(tmp_path, tmp_path_factory, monkeypatch):
    # runs/pk (4 steps) and its latents
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    log = tmp_path / "runs" / "d" / "log.txt"
    cli_ok(*DIT, "--steps", "1", "--lr", "0.001")
    assert "resume:" not in log.read_text()
    out = cli_ok(*DIT, "--steps", "2", "--ckpt-every", "7", "--lr", "0.002", "--allow-change", "lr")
    lines = ["resume: dit.ckpt_every: 500 → 7", "resume: dit.lr: 0.001 → 0.002 (allowed by"]
    text = log.read_text()
    for line in lines:
        assert line in out, out
        assert line in text, text
    # shown, not written, when nothing is trained
    out = cli_ok(*DIT, "--steps", "2", "--ckpt-every", "5")
    assert "resume: dit.ckpt_every: 7 → 5" in out and "nothing to train" in out, out
    assert log.read_text() == text
