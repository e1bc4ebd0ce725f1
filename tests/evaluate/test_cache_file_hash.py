"""``sha256_file_cached`` must not return the hash of a file's earlier content.

Its key was (path, size, mtime): a file rewritten in place with as many bytes and its mtime set
back (``touch -r``, ``os.utime``, ``cp -p``) gave the old file's hash for the rest of the
process, so a checkpoint or a samples file checked against a recorded sha256 passed with other
bytes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from repackctl.files import sha256_file, sha256_file_cached


def test_rewrite_in_place_with_mtime_set_back_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"A" * 4096)
    before = os.stat(path)
    first = sha256_file_cached(path)
    time.sleep(0.05)  # past any timestamp granularity: only the content tells them apart
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(b"B" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` does
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert sha256_file_cached(path) == sha256_file(path) != first


def test_replaced_by_rename_with_old_times_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "samples.npz"
    path.write_bytes(b"1" * 1000)
    before = os.stat(path)
    first = sha256_file_cached(path)
    new = tmp_path / "new.npz"
    new.write_bytes(b"2" * 1000)
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))  # `cp -p` of a same-age file
    os.replace(new, path)
    assert sha256_file_cached(path) == sha256_file(path) != first
