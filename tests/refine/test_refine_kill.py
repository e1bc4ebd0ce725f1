"""`refine train` and `refine apply` killed (SIGKILL, or an exit at a crash point) at any instant,
then the same command again: the result of an uninterrupted run, bit for bit (README: "Nothing
lost").

- `refine train` (its random flips, noised triplets, GAN and EMA): killed between checkpoints,
  and before its first one (exiting at a crash point while it builds its triplets, then a SIGKILL
  while it writes its first checkpoint), then rerun: weights, EMA, discriminator and optimizer states equal those of a run never killed.
- `refine apply`: killed after one refined PNG, after samples.npz but before the card, and by a
  real SIGKILL at a random point, then rerun: every file of the refined folder as an
  uninterrupted apply leaves it, the samples folder untouched.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``); every run works on
a private copy of its cache and runs, in a subprocess with one thread (CPU reductions round by
thread count), the uninterrupted reference in-process under one thread too.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from safetensors.torch import load_file
from support.kill import kill_after_pngs
from support.stack import _settings, stack_with_refiner
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.crash import CRASH_ENV
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.sample.refine import CRASH_AFTER_NPZ, CRASH_AFTER_PNG
from repackctl.sample.run import run_sample
from repackctl.train.checkpoint import latest_checkpoint, read_state

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
STEPS, EVERY = 30, 10
TRAIN = ["refine", "train", "--pack-run", "pack-tiny", "--name", "rk", "--steps", str(STEPS)]
TRAIN += ["--batch-size", "4", "--base-channels", "8", "--disc-channels", "8", "--noise", "0.1"]
TRAIN += ["--ckpt-every", str(EVERY), "--log-every", "1", "--device", "cpu"]
REFINER = "kill-refine32"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _copy(stack: dict[str, str], root: Path) -> Path:
    """A private copy of the stack's cache and runs under ``root`` (the triplets are built in
    it: a kill may land while they are)."""
    for name in ("cache", "runs"):
        shutil.copytree(stack[name], root / name)
    return root


def _train_args(root: Path) -> list[str]:
    return [*TRAIN, "--cache", str(root / "cache"), "--runs", str(root / "runs")]


def _train_in_process(root: Path) -> str:
    with one_torch_thread():
        res = runner.invoke(app, _train_args(root))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def reference(stack, tmp_path_factory) -> Path:
    """The final checkpoint of the uninterrupted run."""
    root = _copy(stack, tmp_path_factory.mktemp("refine-straight"))
    _train_in_process(root)
    final = latest_checkpoint(root / "runs" / "rk")
    assert final is not None and final.name == f"step-{STEPS:07d}"
    return final


def _kill_when(root: Path, ready, poll: float = 0.005) -> bool:
    """Run `refine train` in a subprocess, SIGKILL it once ``ready(run folder)`` holds; whether
    it was still running then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "repackctl", *_train_args(root)],
        env=subprocess_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run, deadline = root / "runs" / "rk", time.monotonic() + 120
    while time.monotonic() < deadline and not ready(run) and proc.poll() is None:
        time.sleep(poll)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return running


def _tensors(obj) -> list[torch.Tensor | object]:
    """The leaves of a loaded optimizer state, in a fixed order."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj, key=str) for x in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _tensors(v)]
    return [obj]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    assert a.name == b.name == f"step-{STEPS:07d}"
    for name in ("model", "ema", "disc"):
        wa, wb = (
            load_file(str(a / f"{name}.safetensors")),
            load_file(str(b / f"{name}.safetensors")),
        )
        assert wa.keys() == wb.keys(), name
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    oa = _tensors(torch.load(a / "optim.pt", weights_only=True))
    ob = _tensors(torch.load(b / "optim.pt", weights_only=True))
    assert len(oa) == len(ob) > 0
    for x, y in zip(oa, ob, strict=True):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def _metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_killed_between_checkpoints_resumes_bit_identically(stack, reference, tmp_path):
    root = _copy(stack, tmp_path)
    ckpts = root / "runs" / "rk" / "checkpoints"
    assert _kill_when(root, lambda run: (ckpts / f"step-{EVERY:07d}").is_dir())
    killed_at = read_state(latest_checkpoint(root / "runs" / "rk"))["step"]
    assert EVERY <= killed_at < STEPS, "the run finished before the kill"
    out = _train_in_process(root)
    assert f"(step {killed_at})" in out and "resumed from" in out, out
    _assert_same_checkpoint(latest_checkpoint(root / "runs" / "rk"), reference)
    steps = _metric_steps(root / "runs" / "rk")
    assert steps == sorted(set(steps)) and steps[-1] == STEPS


def _crash_train_at(root: Path, point: str) -> None:
    """Run `refine train` in a subprocess that exits as a kill would at crash point ``point``."""
    cmd = [sys.executable, "-m", "repackctl", *_train_args(root)]
    env = subprocess_env(root, **{CRASH_ENV: point})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr[-2000:]


def _triplets_done(root: Path) -> np.ndarray:
    """The done mask of the run's (maybe unfinished) triplet group."""
    from repackctl.cache.store import ArrayGroup, DatasetEntry
    from repackctl.pack.load import load_pack
    from repackctl.refine.triplets import KIND, triplet_group_name

    pack = load_pack("pack-tiny", runs=str(root / "runs"))
    entry = DatasetEntry.open(str(root / "cache"), pack.extra["cache"]["entry"])
    return ArrayGroup(entry.group[KIND][triplet_group_name(pack.pack_id, 0.1)]).done_mask()


@pytest.mark.slow
def test_train_killed_before_its_first_checkpoint_reruns_cleanly(stack, reference, tmp_path):
    from repackctl.cache.store import PENDING, WRITTEN
    from repackctl.refine.triplets import CRASH_BEFORE_DONE

    root = _copy(stack, tmp_path)
    run = root / "runs" / "rk"
    # while it builds its noised triplets: the first shard done, the second written, not marked
    _crash_train_at(root, f"{CRASH_BEFORE_DONE}8")
    done = _triplets_done(root)
    assert (done[:8] == WRITTEN).all() and (done[8:] == PENDING).all()
    assert latest_checkpoint(run) is None
    # while it writes its first checkpoint (its temporary folder, or the step just renamed)
    ckpts = run / "checkpoints"
    _kill_when(root, lambda run: ckpts.is_dir() and any(ckpts.iterdir()), poll=0.001)
    _train_in_process(root)
    _assert_same_checkpoint(latest_checkpoint(run), reference)


# --------------------------------------------------------------------------- refine apply
N, BATCH = 10, 3  # the last batch of an uninterrupted apply holds one sample (index 9)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder but the writer's lock (its record names the writer's pid)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SAMPLES_LOCK
    }


def _apply_args(stack: dict[str, str], src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", str(BATCH)]  # fmt: skip


def _apply_in_process(stack: dict[str, str], src: Path) -> None:
    with one_torch_thread():
        res = runner.invoke(app, _apply_args(stack, src))
    assert res.exit_code == 0, res.output


def _crash_at(stack: dict[str, str], src: Path, point: str) -> None:
    env = subprocess_env(Path(stack["runs"]).parent, **{CRASH_ENV: point})
    cmd = [sys.executable, "-m", "repackctl", *_apply_args(stack, src)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr[-2000:]


def _assert_as_uninterrupted(out: Path, ref: dict[str, bytes]) -> None:
    """Every file of the refined folder byte for byte as the uninterrupted apply left it: the
    PNGs, grid.png, settings, samples.npz (a zip with fixed member times) and the card (the
    sha256 of samples.npz included)."""
    now = _files(out)
    assert {f"{i:06d}.png" for i in range(N)} | {"samples.npz", "protocol.json"} <= set(now)
    assert sorted(now) == sorted(ref)
    for name in ref:
        assert now[name] == ref[name], name


@pytest.fixture
def samples(stack, tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(samples folder, its refined folder, the files of an uninterrupted apply); the
    uninterrupted refined folder is moved away, so the killed apply writes where it wrote."""
    with one_torch_thread():
        settings = _settings(stack, run="dit-tiny", num=N, steps=2, out=str(tmp_path / "s"))
        src = run_sample(settings).out_dir
    _apply_in_process(stack, src)
    out = tmp_path / f"s--refine-{REFINER}"
    ref = _files(out)
    shutil.move(out, tmp_path / "uninterrupted")
    return src, out, ref


@pytest.mark.slow
def test_apply_killed_while_it_writes_ends_as_an_uninterrupted_apply(stack, samples):
    src, out, ref = samples
    before = _files(src)
    _crash_at(stack, src, f"{CRASH_AFTER_PNG}0")  # one refined PNG written of a batch of three
    assert sorted(p.name for p in out.glob("0*.png")) == ["000000.png"]
    _crash_at(stack, src, CRASH_AFTER_NPZ)  # samples.npz written, the card not
    assert (out / "samples.npz").is_file() and not (out / "protocol.json").exists()
    _apply_in_process(stack, src)
    _assert_as_uninterrupted(out, ref)
    assert _files(src) == before  # nothing of the samples lost or changed


@pytest.mark.slow
def test_apply_killed_at_a_random_instant_ends_as_an_uninterrupted_apply(stack, samples):
    src, out, ref = samples
    before = _files(src)
    env = subprocess_env(Path(stack["runs"]).parent)
    kill_after_pngs(_apply_args(stack, src), env, out, pngs=1, poll=0.001)
    _apply_in_process(stack, src)
    _assert_as_uninterrupted(out, ref)
    assert _files(src) == before
