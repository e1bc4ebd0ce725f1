"""`refine apply` on the CPU and its thread count: one refined folder, one rounding.

The toy refiner's pixels differ by 1/255 between ``OMP_NUM_THREADS=2`` and ``1`` (some PNGs:
measured). A refined folder made on the CPU records ``cpu_threads`` and every later apply on the
CPU refines with that count, so an apply killed under 2 threads and finished under 1 ends as an
uninterrupted 2-thread apply, byte for byte.

The uninterrupted 1- and 2-thread applies are made in-process under that many torch threads
(what ``OMP_NUM_THREADS`` sets in a child, and what the folder records); the kill and the resume
under another count are real subprocesses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_ok, proc_ok
from support.kill import kill_after_pngs
from support.stack import _settings, stack_with_refiner

from repackctl.paths import SETTINGS_JSON
from repackctl.sample.run import run_sample

pytestmark = pytest.mark.usefixtures("one_thread")
REFINER = "s28-refine32"
N, BATCH = 48, 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _args(stack: dict[str, str], src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", str(BATCH)]  # fmt: skip


def _env(stack: dict[str, str], threads: int) -> dict[str, str]:
    return subprocess_env(Path(stack["runs"]).parent, OMP_NUM_THREADS=str(threads))


def _apply(stack: dict[str, str], src: Path, threads: int) -> None:
    proc_ok(_args(stack, src), _env(stack, threads))


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("0*.png"))}


@pytest.mark.slow
def test_unfinished_refined_folder_finished_under_another_thread_count(stack, tmp_path):
    with one_torch_thread():
        settings = _settings(stack, run="dit-tiny", num=N, steps=40, batch_size=2,
                             out=str(tmp_path / "s"))  # fmt: skip
        src = run_sample(settings).out_dir
    out = tmp_path / f"s--refine-{REFINER}"
    refs = {}
    for threads in (1, 2):
        with one_torch_thread(threads):
            cli_ok(*_args(stack, src))
        refs[threads] = _pngs(out)
        shutil.move(out, tmp_path / f"t{threads}")
    kill_after_pngs(_args(stack, src), _env(stack, 2), out, pngs=1, poll=0.001)
    assert not (out / "protocol.json").exists(), "the apply finished before the kill"
    left = _pngs(out)
    assert 1 <= len(left) < N
    # the thread count matters for a PNG the resumed apply makes
    assert [k for k in refs[2] if k not in left and refs[1][k] != refs[2][k]]
    _apply(stack, src, 1)
    assert _pngs(out) == refs[2]  # byte for byte the 2-thread apply
    assert json.loads((out / SETTINGS_JSON).read_text())["cpu_threads"] == 2
