"""Two `extract` processes of the SAME encoder on one entry, with DataLoader workers, share its
shards and both finish (the README: "Two `extract` processes on one local entry share its shards
through per-shard file locks and give the same arrays as one process").

Before, each process's batch sampler blocked on the shards the other held once it had tried them
all, while the batches of its own last shard were still queued in the DataLoader (whose sampler
runs ahead of the loop that writes the shard and releases its lock): each held its last shard and
waited on the other's, for ever. Per-shard delays (``REPACKCTL_TEST_SHARD_DELAY``) make the two
take the shards in turn, so each one's last shard is one the other deferred."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries

#: 48 samples in 6 shards of 2 batches each, decoded by 2 DataLoader workers
ARGS = ["extract", "--encoder", "patchpix", "--num", "48", "--resolution", "32"]
ARGS += ["--shard", "8", "--chunk", "4", "--batch-size", "4", "--num-workers", "2"]
TIMEOUT = 120  # seconds: far above a run (~10 s); a deadlocked pair never ends


def _start(tmp: Path, delay: str) -> subprocess.Popen:
    env = subprocess_env(tmp, REPACKCTL_TEST_SHARD_DELAY=delay)
    return subprocess.Popen(
        [sys.executable, "-m", "repackctl", *ARGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its DataLoader workers are killed with it on a timeout
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """The outputs of ``procs``; all of them (and their workers) killed if any is still running
    after ``TIMEOUT`` seconds, which fails the test instead of hanging the suite."""
    outs, deadline = [], time.monotonic() + TIMEOUT
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        stuck = [p.communicate()[0][-1500:] for p in procs]
        pytest.fail(f"extract still running after {TIMEOUT} s (deadlock?): {stuck}")
    return outs


def _arrays(cache: Path) -> dict[str, np.ndarray]:
    """The entry's arrays and its (single) features group's, by name."""
    (name,) = list_entries(str(cache))
    entry = DatasetEntry.open(str(cache), name)
    (fid,) = entry.feature_ids()
    feats = entry.features(fid)
    out = {k: entry.group[k][:] for k in ("images", "labels", "keys", "done")}
    out |= {f"features/{k}": feats[k][:] for k in ("tokens", "cls", "done")}
    return out


def _counts(out: str) -> tuple[int, int, int]:
    """(shards encoded, pending shards done by the other, shards done before it began)."""
    m = re.search(r"this process encoded (\d+) shard\(s\); (\d+) pending shard", out)
    assert m, out
    before = re.search(r"resuming: (\d+) samples", out)
    return int(m.group(1)), int(m.group(2)), int(before.group(1)) // 8 if before else 0


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict[str, np.ndarray]:
    """The arrays of one extract alone (the same settings)."""
    tmp = tmp_path_factory.mktemp("one")
    proc = _start(tmp, delay="0")
    (out,) = _finish([proc])
    assert proc.returncode == 0, out
    return _arrays(tmp / "cache")


def _assert_equal(got: dict[str, np.ndarray], one: dict[str, np.ndarray]) -> None:
    assert (got["done"] == WRITTEN).all() and (got["features/done"] == WRITTEN).all()
    assert sorted(got) == sorted(one)
    for k in one:
        np.testing.assert_array_equal(got[k], one[k], err_msg=k)


@pytest.mark.slow
def test_two_extracts_of_one_encoder_with_workers_finish_and_equal_one(tmp_path, one):
    procs = [_start(tmp_path, delay="1.0") for _ in range(2)]
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = [_counts(out) for out in outs]
    assert sum(c[0] for c in counts) == 6, outs  # each shard encoded once, by one of the two
    assert [sum(c) for c in counts] == [6, 6], outs  # the rest: done by the other (or before)
    _assert_equal(_arrays(tmp_path / "cache"), one)


@pytest.mark.slow
def test_the_shard_of_a_killed_extract_is_finished_by_the_other(tmp_path, one):
    # the first extract takes shard 0 and is killed while it holds it (a long per-shard delay);
    # the second defers it, does the other five, then waits for it once it holds no lock and
    # finishes it alone when the first dies (its own loader pass, with workers). Before, it
    # waited with shard 5 taken and unwritten (its batches queued): 4 shards written, not 5
    cache = tmp_path / "cache"
    killed = _start(tmp_path, delay="600")
    procs = [killed]
    try:
        _wait_for(cache, "*/features/*/done/locks/shard-000000.lock", 1, killed)
        survivor = _start(tmp_path, delay="0")
        procs.append(survivor)
        # shards 1-5 written (one chunk of `done` each): the survivor waits for shard 0
        _wait_for(cache, "*/features/*/done/c/*", 5, survivor)
    except BaseException:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
        raise
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    (out,) = _finish([survivor])
    assert survivor.returncode == 0, out
    assert _counts(out) == (6, 0, 0), out
    _assert_equal(_arrays(cache), one)


def _wait_for(cache: Path, pattern: str, count: int, proc: subprocess.Popen) -> None:
    """Until ``count`` files match ``pattern`` in ``cache``; fails if ``proc`` ends first or
    ``TIMEOUT`` seconds pass."""
    deadline = time.monotonic() + TIMEOUT
    while len(list(cache.glob(pattern))) < count:
        assert proc.poll() is None, f"ended before {count} {pattern}"
        assert time.monotonic() < deadline, f"no {count} {pattern} after {TIMEOUT} s"
        time.sleep(0.05)
