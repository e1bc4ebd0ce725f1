"""Two noisy-triplet refiner runs of other seeds started together on a new pack both train.

The noise of noisy triplets (``--noise σ``) depends on the run's seed, and a second seed at one
σ gets its own group (``…--noise<σ>--seed<s>``; the first keeps the plain name). The name was
chosen from the groups there were, then the group was created: two runs started at the same
instant on a new pack both chose the plain name, and the second one was refused ("made with
other settings (seed: 0 vs 1)"); run again, it worked. The creation (under the cache's creation
lock) is now the claim: a run that finds the plain name taken by another seed takes its own.

Two real `refine train` subprocesses, made to meet: the test holds the cache's creation lock
(``cache.creation.creation_lock``) until both wait on it (``/proc/locks`` lists them as
blocked), so both have chosen a name by then; released, both must train, each on its own
seed's noise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from support.stack import shared_stack

from repackctl.cache.creation import creation_lock
from repackctl.cache.store import DatasetEntry
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import KIND, triplet_group_name
from repackctl.train.checkpoint import list_checkpoints, read_state

NOISE = "0.4"
TRAIN = ["refine", "train", "--pack-run", "pack-tiny", "--steps", "1", "--batch-size", "4",
         "--base-channels", "8", "--gan-weight", "0", "--noise", NOISE, "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _waiting_on(folder: Path) -> set[int]:
    """The pids of the processes blocked in an flock of ``folder`` (``/proc/locks``: ``->``)."""
    inode = str(folder.stat().st_ino)
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK":
            if fields[6].split(":")[-1] == inode:
                pids.add(int(fields[5]))
    return pids


def _until_both_wait(procs: dict[int, subprocess.Popen], folder: Path) -> None:
    """Return once every process of ``procs`` is blocked in an flock of ``folder``."""
    deadline = time.monotonic() + 120
    pids = {p.pid for p in procs.values()}
    while not pids <= _waiting_on(folder):
        ended = [p.returncode for p in procs.values() if p.poll() is not None]
        assert not ended and time.monotonic() < deadline, ("never met", ended)
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux /proc/locks")
def test_two_seeds_started_together_on_a_new_pack_both_train(stack, tmp_path) -> None:
    for name in ("cache", "runs"):  # a private copy: no triplets of this σ yet
        shutil.copytree(stack[name], tmp_path / name)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    env = subprocess_env(tmp_path)
    procs: dict[int, subprocess.Popen] = {}
    try:
        with creation_lock(str(cache)):
            for seed in (0, 1):
                cmd = [*TRAIN, "--seed", str(seed), "--name", f"rn-race{seed}"]
                procs[seed] = subprocess.Popen(
                    [sys.executable, "-m", "repackctl", *cmd],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            _until_both_wait(procs, cache)
        outputs = {seed: p.communicate(timeout=240)[0] for seed, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for seed, p in procs.items():
        assert p.returncode == 0, outputs[seed][-3000:]
        assert "made with other settings" not in outputs[seed]
    pack = load_pack("pack-tiny", runs=str(runs))
    groups = DatasetEntry.open(str(cache), pack.extra["cache"]["entry"]).group[KIND]
    plain = triplet_group_name(pack.pack_id, float(NOISE))
    first = groups[plain].attrs["seed"]  # whichever created its group first
    other = 1 - first
    seeded = triplet_group_name(pack.pack_id, float(NOISE), other)
    assert groups[seeded].attrs["seed"] == other
    assert not np.allclose(groups[plain]["latent"][:], groups[seeded]["latent"][:])
    for seed, group in ((first, plain), (other, seeded)):
        ckpt = list_checkpoints(runs / f"rn-race{seed}")[-1]
        assert read_state(ckpt)["extra"]["cache"]["triplets"] == group
