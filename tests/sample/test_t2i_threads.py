"""`sample` of a text-to-image run on the CPU and its thread count (see test_sample_threads):
a folder killed under ``OMP_NUM_THREADS=2`` and finished under 1 ends as an uninterrupted
2-thread run, byte for byte.

The uninterrupted 1- and 2-thread references are made in-process under that many torch threads
(what ``OMP_NUM_THREADS`` sets in a child, and what the folder records); the kill and the
resume under another count are real subprocesses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.caches import shared_t2i_stack
from support.cli import cli_ok, proc_ok
from support.kill import kill_after_pngs

from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (SAMPLES_LOCK, "protocol.json")
    }


@pytest.mark.slow
def test_t2i_folder_finished_under_another_thread_count_is_one_run(tmp_path_factory, tmp_path):
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s28-t2i") / "w")
    out = tmp_path / "s"
    args = ["sample", "-r", "tA", "--prompt", "a red star", "--prompt", "a blue ring", "-n", "8",
            "--steps", "60", "--grid", "0", "--seed", "3", "--device", "cpu", "--runs",
            str(work / "runs"), "--cache", str(work / "cache"), "--batch-size", "2",
            "--out", str(out)]  # fmt: skip
    refs = {}
    for threads in (1, 2):
        with one_torch_thread(threads):
            cli_ok(*args)
        refs[threads] = _files(out)
        shutil.move(out, tmp_path / f"t{threads}")
    assert refs[1]["latents.npy"] != refs[2]["latents.npy"]  # the thread count matters
    kill_after_pngs(args, subprocess_env(work, OMP_NUM_THREADS="2"), out, pngs=1, poll=0.001)
    assert not (out / "protocol.json").exists(), "the run finished before the kill"
    proc_ok(args, subprocess_env(work, OMP_NUM_THREADS="1"))
    assert _files(out) == refs[2]
    assert json.loads((out / SETTINGS_JSON).read_text())["cpu_threads"] == 2
