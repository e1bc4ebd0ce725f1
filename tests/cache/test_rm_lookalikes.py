"""`cache rm` refuses files that only have the names of the cache's files (session 37 audit C #6).

A chunk name was any number and a zarr node any folder holding a ``zarr.json``: a user's
``images/c/9`` beside an array of one shard, and a ``latents/foo/zarr.json`` (or a whole array
copied into ``latents/``) were deleted with the entry. Now the metadata decides: chunk keys lie
inside the array's chunk grid, ``latents/``-like folders hold groups and entry or data groups
hold arrays, and a ``zarr.json`` that is no zarr metadata is the cache's only in a folder of
one of its groups (it holds a ``done`` array): a group whose metadata was damaged is still
removed (tests/cache/test_damaged_zarr_metadata.py).

A real patchpix cache (16 built-in images at 32 px).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

from repackctl.cache.ownership import chunk_grid
from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import CacheError

base_cache, cache = patchpix_fixtures("rm-lookalikes")


def _refused_naming(cache: Path, name: str, path: Path) -> None:
    before = snapshot(cache)
    out = cli_refused(CacheError.exit_code, "cache", "rm", name, "--yes")
    assert f"holds {path}, which the cache did not write" in out, out
    assert "nothing was removed" in out, out
    assert snapshot(cache) == before


def test_a_chunk_outside_the_arrays_grid_is_the_users(cache: Path):
    (name,) = list_entries(str(cache))
    images = cache / name / "images"
    grid = chunk_grid(images)
    assert grid is not None and len(grid) == 4, grid  # (N, H, W, 3): shards along N only
    outside = [images / "c" / str(grid[0]), images / "c" / "0" / "0" / "0" / str(grid[3])]
    for mine in outside:
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text("mine")
        _refused_naming(cache, name, mine)
        mine.unlink()
    shutil.rmtree(images / "c" / str(grid[0]), ignore_errors=True)
    cli_ok("cache", "rm", name, "--yes")
    assert not (cache / name).exists()


def test_a_node_the_groups_do_not_hold_is_the_users(cache: Path):
    (name,) = list_entries(str(cache))
    entry = DatasetEntry.open(str(cache), name)
    entry.create_or_open_group("latents", "lat1", {"made_by": "test"})
    latents = cache / name / "latents"
    mine = latents / "foo"
    mine.mkdir()
    (mine / "zarr.json").write_text("mine")  # no zarr metadata, in no group of the cache's
    _refused_naming(cache, name, mine)
    shutil.rmtree(mine)
    shutil.copytree(cache / name / "labels", mine)  # an array where only groups are written
    _refused_naming(cache, name, mine)
    shutil.rmtree(mine)
    cli_ok("cache", "rm", name, "--yes")
    assert not (cache / name).exists()
