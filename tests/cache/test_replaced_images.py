"""An extract rerun refuses an image folder whose files were replaced under the same names.

A rerun (or another encoder's extract) over an entry compared only the folder's listing (names
and classes) with the entry's: a file fixed or replaced in place kept its old pixels and
features in the cache, exit 0. The entry now records each file as the extract read it (size,
mtime, sha256: ``fingerprints``); a file whose size or mtime changed is hashed, and other bytes
are refused before anything is written. The same bytes (a copy that did not keep the times, a
touched file) are accepted; entries made before the fingerprints are not checked.

Real image folders in ``tmp_path``, real Zarr caches, the CLI in-process; the kill tests run
the extract as a real process killed at its crash points.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import subprocess_env
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused
from support.replaced import extract_args, folder_bytes, only_entry, replace_image

from repackctl.cache.store import FINGERPRINTS
from repackctl.crash import CRASH_ENV
from repackctl.errors import CacheError

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture
def extracted(tmp_path, cache_root) -> tuple[Path, Path]:
    """An image folder (6 files, 2 classes) and the folder of its patchpix entry."""
    folder = random_image_folder(tmp_path / "data")
    cli_ok(*extract_args(folder))
    entry = only_entry(cache_root)
    assert entry.fingerprints is not None and (entry.fingerprints[:, 0] > 0).all()
    return folder, Path(cache_root) / entry.name


def test_replaced_image_is_refused_and_nothing_is_written(extracted):
    folder, entry_dir = extracted
    before = folder_bytes(entry_dir)
    replace_image(folder / "dog" / "1.png", seed=7)
    out = cli_refused(CacheError.exit_code, *extract_args(folder))
    assert f"cache entry {entry_dir.name}" in out and "1 of 6 files" in out, out
    assert "'dog/1.png'" in out and "nothing was written" in out, out
    assert f"repackctl cache rm {entry_dir.name}" in out, out
    assert folder_bytes(entry_dir) == before  # no features, pixels, fingerprints or attributes
    assert "ok" in cli_ok("cache", "verify", entry_dir.name)  # an entry with fingerprints


def test_other_encoder_refuses_a_replaced_image_too(extracted, cache_root):
    folder, entry_dir = extracted
    before = folder_bytes(entry_dir)
    replace_image(folder / "cat" / "0.png", seed=8)
    out = cli_refused(CacheError.exit_code, *extract_args(folder, "builtin"))
    assert "'cat/0.png'" in out and "1 of 6 files" in out, out
    assert folder_bytes(entry_dir) == before
    (only,) = only_entry(cache_root).feature_ids()  # no group of the builtin encoder was made
    assert only.startswith("patchpix--"), only


def test_copy_with_new_times_and_touched_file_are_accepted(extracted, cache_root):
    folder, entry_dir = extracted
    recorded = np.asarray(only_entry(cache_root).fingerprints[:])
    # the folder copied back from elsewhere without its times (same path: the same entry)
    shutil.move(folder, folder.with_name("elsewhere"))
    shutil.copytree(folder.with_name("elsewhere"), folder, copy_function=shutil.copyfile)
    for path in folder.rglob("*.png"):
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = folder_bytes(entry_dir)
    out = cli_ok(*extract_args(folder))
    assert "already done │ 6" in out, out
    # and one file touched since (a later mtime, the same bytes): accepted, by another encoder
    os.utime(folder / "cat" / "2.png")
    cli_ok(*extract_args(folder, "builtin"))
    entry = only_entry(cache_root)
    assert [f.partition("--")[0] for f in entry.feature_ids()] == ["builtin", "patchpix"]
    np.testing.assert_array_equal(entry.fingerprints[:], recorded)  # the record is not rewritten
    assert {k: v for k, v in folder_bytes(entry_dir).items() if not k.startswith("features/")} == {
        k: v for k, v in before.items() if not k.startswith("features/")
    }


def test_files_too_large_to_read_whole_are_decoded_from_their_path(
    tmp_path, cache_root, monkeypatch
):
    """Above ``WHOLE_READ_LIMIT`` a file is not read into memory: a stray non-image (a video in a
    class folder) is skipped from its header as before, and an image decoded from its path gets
    the fingerprint reading it whole gives (so a replacement is still refused)."""
    from repackctl.data import imagefolder

    folder = random_image_folder(tmp_path / "data")
    (folder / "cat" / "clip.png").write_bytes(b"\0" * 4096)  # not an image
    cli_ok(*extract_args(folder))
    whole = np.asarray(only_entry(cache_root).fingerprints[:])
    shutil.rmtree(cache_root)
    monkeypatch.setattr(imagefolder, "WHOLE_READ_LIMIT", 100)  # every file is "large" now
    hashed, hash_file = [], imagefolder.ImageFolderSource.hash_file
    spy = lambda source, i: hashed.append(source.key(i)) or hash_file(source, i)  # noqa: E731
    monkeypatch.setattr(imagefolder.ImageFolderSource, "hash_file", spy)
    out = cli_ok(*extract_args(folder))
    assert sorted(hashed) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert "clip.png" in out and "not an image" in out, out  # skipped, as when read whole
    entry = only_entry(cache_root)
    assert np.array_equal(np.asarray(entry.fingerprints[:]), whole)
    assert (whole[:, 0] > 100).sum() == 6 and (whole[:, 0] == -1).sum() == 1
    replace_image(folder / "dog" / "1.png", seed=7)
    out = cli_refused(CacheError.exit_code, *extract_args(folder))
    assert "'dog/1.png'" in out, out


def test_entry_without_fingerprints_is_not_checked(extracted, cache_root):
    folder, entry_dir = extracted
    group = zarr.open_group(str(entry_dir), mode="r+")
    del group[FINGERPRINTS]  # as an entry made before they were recorded
    replace_image(folder / "dog" / "1.png", seed=7)
    out = cli_ok(*extract_args(folder))  # as before: the listing agrees, the entry is reused
    assert "already done │ 6" in out, out
    assert only_entry(cache_root).fingerprints is None  # nor are they added to such an entry
    cli_ok("cache", "verify", entry_dir.name)


def _arrays(cache_root: str) -> dict[str, np.ndarray]:
    entry = only_entry(cache_root)
    out = {k: entry.group[k][:] for k in ("images", "labels", "keys", "done", FINGERPRINTS)}
    (features,) = entry.feature_ids()
    for name, arr in entry.features(features).group.arrays():
        out[name] = arr[:]
    return out


@pytest.mark.slow
def test_kill_while_fingerprints_are_made_or_written_then_rerun(extracted, tmp_path):
    """Killed after creating the array (the entry is unfinished: made anew), then after writing
    a shard's fingerprints but before its ``done`` (the shard is redone): the rerun's arrays are
    an uninterrupted extract's."""
    folder, entry_dir = extracted
    reference = _arrays(str(entry_dir.parent))
    cache = tmp_path / "killed"
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=str(cache))
    for step in (FINGERPRINTS, "fingerprints-written"):
        cmd = [sys.executable, "-m", "repackctl", *extract_args(folder)]
        res = subprocess.run(cmd, env=env | {CRASH_ENV: step}, capture_output=True, text=True)
        assert res.returncode == 137, step + res.stdout + res.stderr
    if step == "fingerprints-written":  # the shard's rows are there, its done is not
        killed = zarr.open_group(str(cache / entry_dir.name), mode="r")
        assert (killed[FINGERPRINTS][:4, 0] > 0).all() and not killed["done"][:].any()
    cli_ok(*extract_args(folder), "--cache", str(cache))
    got = _arrays(str(cache))
    assert sorted(got) == sorted(reference)
    for name, arr in reference.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)
