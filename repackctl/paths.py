"""Where caches, runs and samples live. Every path is made absolute once, here."""

from __future__ import annotations

from pathlib import Path


def is_url(root: str) -> bool:
    """True for fsspec URLs (``s3://…``, ``memory://…``), false for local paths and ``file://``."""
    return "://" in root and not root.startswith("file://")


def local_path(root: str) -> Path:
    """A local cache/run root as an absolute path (``~`` expanded, ``file://`` stripped)."""
    if root.startswith("file://"):
        root = root[len("file://") :]
    return Path(root).expanduser().resolve()


def cache_root(root: str) -> str:
    """The cache root as stored in attributes: absolute local path or the URL unchanged."""
    return root if is_url(root) else str(local_path(root))


def entry_name(dataset: str, split: str, resolution: int) -> str:
    """Name of a dataset-split entry in the cache (DESIGN.md §4)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset)
    return f"{safe}--{split}--{resolution}px"


def run_dir(runs: str, name: str) -> Path:
    """Folder of the run ``name`` under the runs root."""
    return local_path(runs) / name
