"""`repackctl extract --precision`: honoured on the CPU, part of what a features group is, and
refused where it cannot be honoured; a SIGKILLed extract leaves no DataLoader worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, features_precision, list_entries
from repackctl.cli.app import app
from repackctl.errors import CacheError, ConfigError
from repackctl.runtime import check_precision as _check_precision

runner = CliRunner()
TINY = ["extract", "-n", "8", "--shard", "8", "--chunk", "8", "--device", "cpu"]


def _features(root: str):
    (name,) = list_entries(root)
    entry = DatasetEntry.open(root, name)
    (fid,) = entry.feature_ids()
    return entry.features(fid)


def _extract(root: Path, *args: str):
    return runner.invoke(app, [*TINY, "--cache", str(root), *args])


def _mark_pending(feats) -> None:
    """Every row pending again, as `cache verify --repair` leaves damaged rows."""
    feats.done[:] = np.zeros(feats.done.shape, np.uint8)
    feats.group.attrs["complete"] = False


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_is_honoured_on_the_cpu_and_recorded(tmp_path, precision):
    assert _extract(tmp_path / "fp32").exit_code == 0
    res = _extract(tmp_path / "half", "--precision", precision)
    assert res.exit_code == 0, res.output
    assert precision in res.output  # the summary table names it
    full, half = _features(str(tmp_path / "fp32")), _features(str(tmp_path / "half"))
    assert full.attrs["precision"] == "fp32" and half.attrs["precision"] == precision
    assert half.attrs["run_header"]["precision"] == precision
    # the header says where the precision came from, as training's does (it said "settings")
    assert half.attrs["run_header"]["precision_source"] == "flag"
    assert full.attrs["run_header"]["precision_source"] == "default"
    assert f"{precision} (flag)" in res.output
    a, b = full["tokens"][:].astype(np.float32), half["tokens"][:].astype(np.float32)
    assert not np.array_equal(a, b)  # computed in another precision, not fp32 relabelled
    np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max())  # …and still the same features


def test_another_precision_is_refused_for_the_same_features(tmp_path):
    root = tmp_path / "cache"
    assert _extract(root, "--precision", "bf16").exit_code == 0
    feats = _features(str(root))
    before = feats["tokens"][:]
    for args in ([], ["--precision", "fp16"]):  # a rerun with fp32 (the default) or fp16
        res = _extract(root, *args)
        assert res.exit_code == CacheError.exit_code, res.output
        assert "precision: 'bf16' vs" in res.output and "Traceback" not in res.output
        assert "Hint: use --precision bf16" in res.output
    # an interrupted bf16 extraction is not continued in fp32 either
    _mark_pending(feats)
    res = _extract(root)
    assert res.exit_code == CacheError.exit_code and "precision" in res.output
    assert (feats.done[:] == 0).all()  # nothing written
    res = _extract(root, "--precision", "bf16")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_features(str(root))["tokens"][:], before)


def test_the_hint_names_every_flag_that_continues_the_features(tmp_path):
    """An interrupted `--precision bf16 --no-flips` extraction: the hint gave only --precision,
    then (with it) only `cache rm`, which deletes the finished half; it now names both flags."""
    root = tmp_path / "cache"
    assert _extract(root, "--precision", "bf16", "--no-flips").exit_code == 0
    _mark_pending(feats := _features(str(root)))
    res = _extract(root)
    assert res.exit_code == CacheError.exit_code, res.output
    assert "Hint: use --precision bf16 --no-flips to continue" in res.output
    res = _extract(root, "--precision", "bf16")
    assert "Hint: use --no-flips to continue" in res.output
    assert (feats.done[:] == 0).all()  # nothing written by the refused runs
    assert _extract(root, "--precision", "bf16", "--no-flips").exit_code == 0


def test_features_from_before_precision_was_recorded_keep_their_id(tmp_path):
    root = tmp_path / "cache"
    assert _extract(root).exit_code == 0
    feats = _features(str(root))
    fid = feats.group.basename
    del feats.group.attrs["precision"]  # as versions before the attribute wrote them
    _mark_pending(feats)
    assert features_precision(feats.attrs) == "fp32"  # written on a CPU: fp32 whatever was asked
    res = _extract(root, "--precision", "bf16")
    assert res.exit_code == CacheError.exit_code and "precision: 'fp32' vs 'bf16'" in res.output
    res = _extract(root)  # fp32 continues them, under the same id, and records the precision
    assert res.exit_code == 0, res.output
    feats = _features(str(root))
    assert feats.group.basename == fid and feats.attrs["precision"] == "fp32"
    assert (feats.done[:] == 1).all()


def test_precision_of_older_features_follows_their_run_header():
    # before the attribute, autocast ran on CUDA only
    cuda = {"run_header": {"device": "cuda:0", "precision": "bf16"}}
    cpu = {"run_header": {"device": "cpu", "precision": "bf16"}}
    assert features_precision(cuda) == "bf16"
    assert features_precision(cpu) == "fp32"
    assert features_precision({}) == "fp32"
    assert features_precision({**cuda, "precision": "fp32"}) == "fp32"  # recorded wins


def test_a_precision_the_device_cannot_autocast_to_is_refused():
    _check_precision("bf16", torch.device("cpu"))  # supported: no error
    with pytest.raises(ConfigError) as e:
        _check_precision("fp16", torch.device("meta"))  # no autocast on this device type
    assert "--precision fp16" in e.value.message and "--precision" in e.value.hint


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")
def test_killed_extract_leaves_no_loader_worker_behind(tmp_path):
    args = ["extract", "-n", "3000", "--shard", "32", "--chunk", "16", "--batch-size", "16"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "repackctl", *args, "--num-workers", "2"],
        env=subprocess_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the workers stay findable as orphans
    )
    try:
        workers: list[int] = []
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            written = list((tmp_path / "cache").glob("*/features/*/done/c/*"))
            workers = [p for p in _group_alive(proc.pid) if p != proc.pid]
            if written and len(workers) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 2, "no running extract with 2 workers"
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as an OOM killer would
        proc.wait()
        deadline = time.time() + 30  # the fix ends them at once; without it they stay for good
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.1)
        assert _group_alive(proc.pid) == []
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
