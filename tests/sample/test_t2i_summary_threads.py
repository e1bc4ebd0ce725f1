"""`sample` of a text-to-image run on the CPU computes with the thread count its folder records,
as a class-conditional one does, but its summary left out the "CPU threads" row that says so
(the README: every later `sample` "says so in its log and summary"). Run again under another
``OMP_NUM_THREADS``, the summary names the folder's count.

The folder is made in-process under 2 torch threads (what ``OMP_NUM_THREADS=2`` sets in a
child); the later `sample` is a real subprocess under ``OMP_NUM_THREADS=1``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import subprocess_env
from support.caches import shared_t2i_stack
from support.cli import cli_ok, proc_ok

from repackctl.paths import SETTINGS_JSON

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_t2i_summary_names_the_folders_cpu_threads(tmp_path_factory, tmp_path):
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("audit7-t2i") / "w")
    out = tmp_path / "s"
    args = ["sample", "-r", "tA", "--prompt", "a red star", "-n", "2", "--steps", "2",
            "--grid", "0", "--device", "cpu", "--runs", str(work / "runs"), "--cache",
            str(work / "cache"), "--out", str(out)]  # fmt: skip
    torch.set_num_threads(2)  # the `one_thread` fixture gives the count back
    first = cli_ok(*args)
    torch.set_num_threads(1)
    assert "CPU threads │ 2 per process (the folder's)" in first, first
    assert json.loads((out / SETTINGS_JSON).read_text())["cpu_threads"] == 2
    again = proc_ok(args, subprocess_env(work, OMP_NUM_THREADS="1"))
    assert "0 now, 2 already done" in again, again
    assert "CPU threads │ 2 per process (the folder's)" in again, again
