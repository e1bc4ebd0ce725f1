"""Helpers of the demo tests: a byte-exact snapshot of a folder, and the check that a
metrics.json record names what was scored with its true sha256."""

from __future__ import annotations

import os
from pathlib import Path

from repackctl.files import sha256_file


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path below ``root``: file contents, link targets, folders."""
    snap: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = "link → " + os.readlink(p)
        elif p.is_file():
            snap[rel] = p.read_bytes()
        else:
            snap[rel] = "folder"
    return snap


def folder_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The bytes of every file below ``folder`` (by relative path), but those named ``skip``
    (e.g. a lock file that a rerun rewrites)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def assert_scored(record: dict, folder_prefix: str) -> None:
    """``record`` names a samples.npz and the checkpoint that made it, with their true sha256."""
    npz = Path(record["samples"])
    assert npz.name == "samples.npz" and npz.parent.name.startswith(folder_prefix)
    assert record["samples_sha256"] == sha256_file(npz)
    weights = Path(record["checkpoint"]) / f"{record['weights']}.safetensors"
    assert record["checkpoint_sha256"] == sha256_file(weights)
