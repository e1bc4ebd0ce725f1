"""`sample` on the CPU and its thread count: one samples folder, one rounding.

CPU matmuls split their sums by thread count, so the toy DiT's latents differ by ~1e-7 between
``OMP_NUM_THREADS=2`` and ``1`` (every sample) and some PNGs by 1/255 (sample 3 of these
settings: measured). A folder recorded its batch size and world size but not the thread count,
so a run killed under 2 threads and finished under 1 mixed two roundings in one folder,
silently. Now a folder made on the CPU records ``cpu_threads`` in its settings, and every later
call on the CPU computes its samples with that count (whatever ``OMP_NUM_THREADS`` says, said in
its log and summary):

- an unfinished folder (a real SIGKILL under 2 threads) finished under 1 thread, by a real
  subprocess or in-process, ends as an uninterrupted 2-thread run, byte for byte (and the
  in-process caller keeps its own thread count);
- a finished folder remakes a lost PNG with its own count, so the rebuilt samples.npz holds the
  recorded pixels;
- a folder started before the count was recorded resumes as before and is left as it was;
- on CUDA nothing is recorded or applied (its kernels do not round by CPU threads).

The uninterrupted references are made in-process under that many torch threads (what
``OMP_NUM_THREADS`` sets in a child, and what the folder records); one real SIGKILL under 2
threads leaves the unfinished folder each test copies (the tests write in it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_ok, proc_ok
from support.kill import kill_after_pngs
from support.stack import shared_stack

from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.sample.folder import claim_batching, cpu_threads, sampling_threads

pytestmark = pytest.mark.usefixtures("one_thread")
N, BATCH, STEPS, SEED = 12, 2, 40, 1
RECOUNTED = 3  # a sample whose PNG differs between 1 and 2 threads (measured)
APPLIED = "computing with 2 CPU threads per process"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def made(stack, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted folders of the same settings made under 2 threads and under 1
    (in-process, under that many torch threads)."""
    root = tmp_path_factory.mktemp("s28-threads")
    folders = {threads: root / f"t{threads}" for threads in (2, 1)}
    for threads, out in folders.items():
        with one_torch_thread(threads):
            cli_ok(*_args(stack, out))
    return folders


@pytest.fixture(scope="module")
def killed_once(stack, tmp_path_factory) -> Path:
    """An unfinished folder: a real SIGKILL of `sample` under 2 threads once it wrote a PNG.
    Tests copy it (``_killed``)."""
    out = tmp_path_factory.mktemp("s28-killed") / "killed"
    kill_after_pngs(_args(stack, out), _env(stack, 2), out, pngs=1, poll=0.001)
    assert not (out / "protocol.json").exists(), "the run finished before the kill"
    assert 1 <= len(list(out.glob("0*.png"))) < N
    return out


def _args(stack: dict[str, str], out: Path) -> list[str]:
    return ["sample", "-r", "dit-tiny", "-n", str(N), "--steps", str(STEPS), "--seed", str(SEED),
            "--batch-size", str(BATCH), "--out", str(out), "--runs", stack["runs"],
            "--cache", stack["cache"], "--device", "cpu"]  # fmt: skip


def _env(stack: dict[str, str], threads: int) -> dict[str, str]:
    return subprocess_env(Path(stack["runs"]).parent, OMP_NUM_THREADS=str(threads))


def _sample(stack: dict[str, str], out: Path, threads: int) -> str:
    """A real `repackctl sample` under ``OMP_NUM_THREADS=threads``; its output (it must pass)."""
    return proc_ok(_args(stack, out), _env(stack, threads))


def _killed(killed_once: Path, out: Path) -> None:
    """A copy at ``out`` of the folder a real SIGKILL under 2 threads left (``killed_once``)."""
    shutil.copytree(killed_once, out)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder but the writer's lock and the card (which names its run)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (SAMPLES_LOCK, "protocol.json")
    }


def _differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if a[k] != b[k]]


def _settings(folder: Path) -> dict:
    return json.loads((folder / SETTINGS_JSON).read_text())


@pytest.mark.slow
def test_unfinished_folder_finished_under_another_thread_count_is_one_run(
    stack, made, killed_once, tmp_path
):
    ref = _files(made[2])
    # the thread count matters: an uninterrupted 1-thread run has other latents and pixels
    assert {"latents.npy", f"{RECOUNTED:06d}.png"} <= set(_differing(ref, _files(made[1])))
    out = tmp_path / "killed"
    _killed(killed_once, out)
    log = _sample(stack, out, 1)
    assert _differing(ref, _files(out)) == []  # byte for byte the 2-thread run
    assert _settings(out)["cpu_threads"] == 2  # recorded when claimed, kept
    assert APPLIED in log and "was given 1" in log, log
    assert "2 per process (the folder's)" in log, log  # the summary's "CPU threads" row


@pytest.mark.slow
def test_in_process_resume_uses_the_folder_count_and_restores_its_own(
    stack, made, killed_once, tmp_path
):
    out = tmp_path / "killed"
    _killed(killed_once, out)
    assert torch.get_num_threads() == 1  # the `one_thread` fixture's
    cli_ok(*_args(stack, out))
    assert torch.get_num_threads() == 1  # the caller's count, given back
    assert _differing(_files(made[2]), _files(out)) == []


@pytest.mark.slow
def test_finished_folder_remakes_a_lost_png_with_its_thread_count(stack, made, tmp_path):
    out = tmp_path / "done"
    shutil.copytree(made[2], out, ignore=shutil.ignore_patterns(SAMPLES_LOCK))
    ref = _files(out)
    card = json.loads((out / "protocol.json").read_text())
    (out / f"{RECOUNTED:06d}.png").unlink()
    (out / "samples.npz").unlink()
    assert "1 now" in _sample(stack, out, 1)
    assert _differing(ref, _files(out)) == []  # the PNG and the rebuilt samples.npz's pixels
    now = json.loads((out / "protocol.json").read_text())
    assert (
        now["files"]["samples.npz"]["images_sha256"]
        == (card["files"]["samples.npz"]["images_sha256"])
    )


@pytest.mark.slow
def test_folder_without_a_recorded_thread_count_resumes_as_before(stack, killed_once, tmp_path):
    out = tmp_path / "killed"
    _killed(killed_once, out)
    started = _settings(out)
    assert started.pop("cpu_threads") == 2
    (out / SETTINGS_JSON).write_text(json.dumps(started))  # as an earlier version started it
    log = _sample(stack, out, 1)
    assert APPLIED not in log and "CPU threads" not in log, log
    assert _settings(out) == started  # left as it was
    assert len(list(out.glob("0*.png"))) == N


def test_cuda_folder_records_and_applies_no_thread_count(tmp_path):
    fingerprint = {"num": N}
    cuda = torch.device("cuda:0")
    assert cpu_threads(cuda) is None and cpu_threads(torch.device("cpu")) == 1
    claim, _, _ = claim_batching(tmp_path / "new", fingerprint, BATCH, 1, "", cpu_threads(cuda))
    assert "cpu_threads" not in claim
    claim, _, _ = claim_batching(tmp_path / "cpu", fingerprint, BATCH, 1, "", 2)
    assert claim["cpu_threads"] == 2
    assert sampling_threads(claim, cuda) is None and sampling_threads(claim, "cpu") == 2
