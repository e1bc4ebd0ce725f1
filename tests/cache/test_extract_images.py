"""`extract` and the entry's image shards: two extracts of different encoders running at once
write each image shard once (the entry's own shard lock), and an extract on an entry that holds
the images reads them back instead of decoding them again (no repeated decode warnings)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from PIL import Image
from support.caches import random_image_folder
from support.cli import cli_ok, runner
from support.snapshot import snapshot

from repackctl.cache.store import list_entries
from repackctl.cli.app import app

BASE = ["--num", "24", "--resolution", "32", "--shard", "8", "--chunk", "4", "--batch-size", "4"]
ENCODERS = ("builtin", "patchpix")


def _stored(cache: Path) -> dict[str, bytes | str]:
    """The bytes of every chunk and done array of the cache's single entry (the zarr.json files
    hold the run's own paths and are left out, as are the writers' lock files)."""
    (name,) = list_entries(str(cache))
    snap = snapshot(cache / name)
    return {k: v for k, v in snap.items() if "zarr.json" not in k and "/locks" not in k}


def _extract(tmp: Path, encoder: str, delay: str = "0") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "repackctl", "extract", "--encoder", encoder, *BASE]
    env = subprocess_env(tmp, REPACKCTL_TEST_SHARD_DELAY=delay)
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _image_writes(cache: Path, procs: list[subprocess.Popen]) -> dict[str, set]:
    """Each version (inode, mtime) seen of the entry's image and ``done`` files while ``procs``
    run: zarr replaces a file on every write, so two versions of one file are two writes."""
    seen: dict[str, set] = {}
    while any(p.poll() is None for p in procs):
        for f in [*cache.glob("*/images/c/*/0/0/0"), *cache.glob("*/done/c/*")]:
            if not f.name.isdigit():  # zarr's temporary (``1.<uuid>.partial``) before its rename
                continue
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            seen.setdefault(str(f.relative_to(cache)), set()).add((st.st_ino, st.st_mtime_ns))
        time.sleep(0.005)
    return seen


@pytest.mark.slow
def test_two_extracts_of_other_encoders_write_each_image_shard_once(tmp_path):
    # one extract per encoder at once, on a new entry: before, each took the shard locks of its
    # own features group only, so both decoded all 24 images and wrote every image shard and
    # every chunk of the entry's `done` (each was replaced twice)
    procs = [_extract(tmp_path / "both", enc, delay="1.0") for enc in ENCODERS]
    writes = _image_writes(tmp_path / "both" / "cache", procs)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(writes) == 6, writes  # 3 image shards, 3 chunks of `done`
    twice = sorted(k for k, v in writes.items() if len(v) > 1)
    assert not twice, f"written by both extracts: {twice}"
    # the same bytes as the two extracts run one after the other
    for enc in ENCODERS:
        proc = _extract(tmp_path / "one", enc)
        assert proc.communicate(timeout=300)[0] and proc.returncode == 0
    assert _stored(tmp_path / "both" / "cache") == _stored(tmp_path / "one" / "cache")
    cli_ok("cache", "verify", "--cache", str(tmp_path / "both" / "cache"))  # exits 0


def test_extract_on_an_existing_entry_does_not_decode_its_images_again(tmp_path, monkeypatch):
    # PIL warns on every decode of an image over MAX_IMAGE_PIXELS (48×40 = 1920 px here)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    folder = random_image_folder(tmp_path / "imgs", per=2)
    data = ["--data", f"imagefolder:{folder}", "--resolution", "32", "--shard", "4", "--chunk", "2"]
    warned = "Warning: cat/0.png: DecompressionBombWarning"
    first = cli_ok("extract", "--encoder", "builtin", *data)
    assert warned in first
    entry_before = _stored(tmp_path / "cache")
    # the second encoder's features come from the pixels the entry holds: not decoded again,
    # so its warnings are not printed again (before, each was, for pixels that went unused)
    second = cli_ok("extract", "--encoder", "patchpix", *data)
    assert re.search(r"written now\W+4\b", second), second
    assert "DecompressionBombWarning" not in second, second
    after = _stored(tmp_path / "cache")
    assert {k: v for k, v in after.items() if "features/patchpix" not in k} == entry_before
    # byte for byte what an extract of that encoder alone (decoding every image) writes
    alone = tmp_path / "alone"
    res = runner.invoke(app, ["extract", "--encoder", "patchpix", *data, "--cache", str(alone)])
    assert res.exit_code == 0 and warned in " ".join(res.output.split()), res.output
    assert _stored(alone) == {k: v for k, v in after.items() if "features/builtin" not in k}


def test_images_another_extract_recorded_meanwhile_are_kept(tmp_path):
    # the writer of one encoder finds the image shard it decoded recorded by another encoder's
    # extract since it read the entry: the same pixels are kept as they are and its features
    # marked done; other pixels (a file changed in between) leave its features pending
    import numpy as np
    import torch

    from repackctl.cache.creation import ShardLocks
    from repackctl.cache.store import DatasetEntry
    from repackctl.extract import _ShardWriter

    root = str(tmp_path / "cache")
    entry = DatasetEntry.create_or_open(root, "ds", "train", 16, 8, {"kind": "t"}, None, 2, 4)
    feats = entry.create_or_open_features("enc", {"id": "enc"}, 1, 2, 3)
    theirs = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    entry.images[0:4], entry.done[0:4] = theirs, np.ones(4, np.uint8)  # the other extract's
    shard_file = tmp_path / "cache" / "ds--train--16px" / "images" / "c" / "0" / "0" / "0" / "0"
    stored = shard_file.stat()
    locks = ShardLocks(root, feats.done)
    writer = _ShardWriter(
        entry, feats, np.zeros(8, np.uint8), locks, None, torch.device("cpu"), "fp32", 16, 1
    )

    def buf(images: np.ndarray) -> dict[str, np.ndarray]:
        codes = np.ones(4, np.uint8)
        tokens = np.full((4, 1, 2, 3), 0.5, np.float16)
        keys = np.array(list("abcd"), dtype=object)
        cls = np.zeros((4, 1, 3), np.float16)
        labels = np.zeros(4, np.int32)
        return dict(images=images, labels=labels, keys=keys, codes=codes, tokens=tokens, cls=cls)

    locks.acquire(0)
    assert writer._write(range(0, 4), buf(theirs)) is None
    assert (feats.done[0:4] == 1).all() and (feats["tokens"][0:4] == 0.5).all()
    now = shard_file.stat()  # zarr replaces a file it writes: not written again
    assert (now.st_ino, now.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)
    feats.done[0:4] = np.zeros(4, np.uint8)
    locks.acquire(0)
    message = writer._write(range(0, 4), buf(255 - theirs))
    assert message and "left pending" in message
    assert (feats.done[0:4] == 0).all() and (entry.images[0:4] == theirs).all()
