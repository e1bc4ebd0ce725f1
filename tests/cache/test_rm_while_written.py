"""`cache rm` never deletes an entry (or a group of it) that another process is writing or
reading.

It deleted an entry that a running extract was filling: the extract died with a KeyError
traceback. Now every writer (extract, captions, pack encode, refiner triplets) holds a shared
lock on the entry folder and `cache rm` refuses, without waiting, while one does. It also
deleted the entry a training was reading: the training went on with its buffer, then stopped at
its next read with a lost-chunk error. Every reading view (``GuardedArray``) now holds its group
the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import patchpix_cache
from typer.testing import CliRunner

from repackctl.cache.creation import entry_writer
from repackctl.cache.integrity import GuardedArray
from repackctl.cache.removal import remove
from repackctl.cache.store import DatasetEntry, list_entries, open_root
from repackctl.cli.app import app
from repackctl.errors import CacheError

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--num", "24", "--resolution", "32"]
EXTRACT += ["--shard", "8", "--chunk", "4", "--batch-size", "4"]
NAME = "builtin-n24--train--32px"


def _wait_for_entry(cache: str, proc: subprocess.Popen) -> DatasetEntry:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if NAME in list_entries(cache):
            entry = DatasetEntry.open(cache, NAME)
            if (entry.done[:] != 0).any():  # a first shard is written: the writer is inside
                return entry
        time.sleep(0.1)
    raise AssertionError(f"the extract did not start writing: {proc.communicate()[0]}")


@pytest.mark.slow
def test_rm_of_an_entry_being_extracted_is_refused_and_the_extract_finishes(tmp_path):
    env = subprocess_env(tmp_path, REPACKCTL_TEST_SHARD_DELAY="1.0")
    cache = env["REPACKCTL_CACHE"]
    cmd = [sys.executable, "-m", "repackctl", *EXTRACT]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_entry(cache, proc)
        res = runner.invoke(app, ["cache", "rm", NAME, "--yes", "--cache", cache])
        out = " ".join(res.output.split())
        assert res.exit_code == CacheError.exit_code, res.output
        assert "is being written by another process" in out and "nothing was removed" in out
        assert "Hint:" in out and "Traceback" not in out
        feats = DatasetEntry.open(cache, NAME).feature_ids()
        res = runner.invoke(
            app, ["cache", "rm", NAME, "--features", feats[0], "-y", "--cache", cache]
        )
        assert res.exit_code == CacheError.exit_code, res.output
        out = " ".join(res.output.split())
        # the entry is being written (its images), not named as if the features group were
        assert f"cache entry {NAME} is being written by another process" in out, out
        assert f"no group of it is removed meanwhile: features/{feats[0]}" in out, out
        out = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    entry = DatasetEntry.open(cache, NAME)
    assert (entry.done[:] == 1).all()  # every image written, nothing lost to the rm
    res = runner.invoke(app, ["cache", "rm", NAME, "--yes", "--cache", cache])
    assert res.exit_code == 0 and list_entries(cache) == []  # no writer: removed


def test_a_held_writer_lock_refuses_removal_until_released(tmp_path):
    cache = str(tmp_path / "cache")
    args = ("ds", "train", 16, 8, {"kind": "test"}, None, 4, 8)
    entry = DatasetEntry.create_or_open(cache, *args)
    with entry_writer(entry.group):
        with pytest.raises(CacheError, match="being written by another process"):
            remove(cache, entry.name)
    assert list_entries(cache) == [entry.name]
    remove(cache, entry.name)
    assert list_entries(cache) == [] and list(open_root(cache).group_keys()) == []


def test_a_writer_is_refused_while_or_after_its_entry_is_removed(tmp_path):
    """A writer that opened the entry just before a `cache rm` wrote on into the removed folder
    (zarr recreated it as loose chunks): it is refused, and nothing is created at the path."""
    from repackctl.cache.creation import removal_lock
    from repackctl.cache.ownership import group_dir

    cache = str(tmp_path / "cache")
    args = ("ds", "train", 16, 8, {"kind": "test"}, None, 4, 8)
    entry = DatasetEntry.create_or_open(cache, *args)
    folder = group_dir(entry.group)
    with removal_lock(folder, "cache entry ds"):
        with pytest.raises(CacheError, match="being removed or repaired by another process"):
            with entry_writer(entry.group):
                raise AssertionError("the block must not run")
    remove(cache, entry.name)
    with pytest.raises(CacheError, match="being removed or repaired by another process"):
        with entry_writer(entry.group):
            raise AssertionError("the block must not run")
    assert not folder.exists()


def test_a_reading_view_refuses_removal_until_released(tmp_path):
    cache = str(tmp_path / "cache")
    args = ("ds", "train", 16, 8, {"kind": "test"}, None, 4, 8)
    entry = DatasetEntry.create_or_open(cache, *args)
    view = GuardedArray(entry.labels, entry.done[:] >= 0, "labels", "hint")
    with pytest.raises(CacheError, match="is being read by another process"):
        remove(cache, entry.name)
    assert list_entries(cache) == [entry.name]
    del view  # the reader ended (a killed one: the kernel releases its locks)
    remove(cache, entry.name)
    assert list_entries(cache) == []


def _wait_for_steps(run: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"the training did not start: {proc.communicate()[0]}")


@pytest.mark.slow
def test_rm_of_an_entry_a_training_reads_is_refused_until_the_training_ends(tmp_path):
    patchpix_cache(tmp_path / "cache", num=16)
    env = subprocess_env(tmp_path)
    cache = env["REPACKCTL_CACHE"]
    (name,) = list_entries(cache)
    feats = DatasetEntry.open(cache, name).feature_ids()
    cmd = [sys.executable, "-m", "repackctl", "pack", "train", "--encoder", "patchpix"]
    cmd += ["--resolution", "32", "-n", "16", "--steps", "100000", "--batch-size", "8"]
    cmd += ["--ch", "8", "-c", "4", "--log-every", "1", "--name", "reader", "--device", "cpu"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_steps(Path(env["REPACKCTL_RUNS"]) / "reader", proc)
        for more in ([], ["--features", feats[0]]):
            res = runner.invoke(app, ["cache", "rm", name, *more, "--yes", "--cache", cache])
            out = " ".join(res.output.split())
            assert res.exit_code == CacheError.exit_code, res.output
            assert "is being read by another process" in out and "nothing was removed" in out
            assert "Hint:" in out and "Traceback" not in out
        assert proc.poll() is None  # the training reads on
    finally:
        proc.kill()
        proc.wait()
    assert (DatasetEntry.open(cache, name).done[:] == 1).all()
    res = runner.invoke(app, ["cache", "rm", name, "--yes", "--cache", cache])
    assert res.exit_code == 0 and list_entries(cache) == [], res.output  # killed: released
