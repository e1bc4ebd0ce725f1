"""`cache rm ENTRY --triplets ID` / `--text ID` removes a refiner-triplets or caption-features
group whose ``zarr.json`` cannot be read, as `--features` / `--latents` do: `cache ls` lists it
as "ID (damaged)" and `cache verify` says to remove it with `cache rm`, but it was refused as
"no refiner triplets 'ID'", which left removing the whole entry as the only way out."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry, list_entries

base_cache, cache = patchpix_fixtures("rm-damaged")


@pytest.mark.parametrize("kind", ["triplets", "text"])
def test_a_damaged_triplets_or_text_group_is_removed_alone(cache: Path, monkeypatch, kind):
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    (name,) = list_entries(str(cache))
    entry = DatasetEntry.open(str(cache), name)
    (fid,) = entry.feature_ids()
    entry.create_or_open_group(kind, "g1", {"made_by": "test"})
    meta = cache / name / kind / "g1" / "zarr.json"
    meta.write_text('{"zarr_format": 3, "node_')  # cut short
    assert "g1 (damaged)" in cli_ok("cache", "ls")

    out = cli_ok("cache", "rm", name, f"--{kind}", "g1", "--yes")
    assert f"removed {name}/{kind}/g1" in out, out
    assert not (cache / name / kind / "g1").exists()
    # the rest of the entry is kept, and it is healthy again
    entry = DatasetEntry.open(str(cache), name)
    assert entry.feature_ids() == [fid] and (entry.done[:] == 1).all()
    assert f"{name}: ok" in cli_ok("cache", "verify")
