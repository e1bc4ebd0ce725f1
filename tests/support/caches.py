"""A small real cache for the pack tests: built-in images through the `patchpix` encoder."""

from __future__ import annotations

import shutil
from pathlib import Path


def patchpix_cache(cache: Path, num: int = 16, resolution: int = 32) -> Path:
    """Extract ``num`` built-in train images at ``resolution`` px into ``cache`` (patchpix
    tokens, chunks and shards of 8); returns ``cache``."""
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    flags = {"cache": str(cache), "num_workers": 0, "extract.encoder": "patchpix"}
    flags |= {"extract.num": num, "extract.resolution": resolution}
    flags |= {"extract.chunk": 8, "extract.shard": 8}
    run_extract(resolve_settings(None, flags, environ={}).settings)
    return cache


def private_copy(base: Path, tmp_path: Path) -> Path:
    """A copy of the module's cache ``base`` at ``tmp_path / "cache"`` (a test may change it)."""
    dst = tmp_path / "cache"
    shutil.copytree(base, dst)
    return dst
