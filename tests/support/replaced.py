"""Shared pieces of the tests of `extract`'s fingerprint check (an image folder whose files are
replaced under the same name): the extract command, the entry, the bytes of a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from repackctl.cache.store import DatasetEntry, list_entries

FLAGS = ["--resolution", "32", "--shard", "4", "--chunk", "2", "--device", "cpu"]


def extract_args(folder: Path, encoder: str = "patchpix") -> list[str]:
    """`repackctl extract` of the image folder ``folder`` (32 px, shards of 4, chunks of 2)."""
    return ["extract", "--encoder", encoder, "--data", f"imagefolder:{folder}", *FLAGS]


def only_entry(cache_root: str) -> DatasetEntry:
    """The one entry of the cache ``cache_root``."""
    (name,) = list_entries(cache_root)
    return DatasetEntry.open(cache_root, name)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the entry's bytes on disk), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def replace_image(path: Path, seed: int) -> None:
    """Other pixels under the same name (and the same size: a PNG of the same shape)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
