"""`extract --chunk/--shard` on an existing entry: the entry keeps its layout, and says so.

The entry's chunk and shard sizes are fixed when it is created (every features group follows
them), so a second extract with other `--chunk`/`--shard` values used the entry's layout and
said nothing: the flags were silently ignored. A given value that differs now gets a `note:`
naming the kept layout and where the value came from; a default value says nothing.
"""

from __future__ import annotations

import zarr
from conftest import one_torch_thread
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry, list_entries

SOURCE = ["--num", "16", "--resolution", "32", "--batch-size", "8"]


def _extract(encoder: str, *layout: str) -> str:
    with one_torch_thread():
        return cli_ok("extract", "--encoder", encoder, *SOURCE, *layout)


def test_a_given_layout_that_the_entry_does_not_have_is_announced(cache_root, monkeypatch):
    first = _extract("patchpix", "--chunk", "4", "--shard", "8")
    assert "note:" not in first  # a new entry takes the given layout
    (name,) = list_entries(cache_root)

    out = _extract("builtin", "--chunk", "8", "--shard", "16")
    assert f"note: cache entry {name} exists and keeps its layout (chunk 4, shard 8)" in out
    assert "--chunk 8 and --shard 16 not applied" in out
    entry = DatasetEntry.open(cache_root, name)
    (fid,) = [f for f in entry.feature_ids() if f.startswith("builtin")]
    tokens = entry.features(fid)["tokens"]
    assert isinstance(tokens, zarr.Array) and tokens.shards[0] == 8 and tokens.chunks[0] == 4

    # the same value, or a default one, is no news
    again = _extract("builtin", "--chunk", "4")
    assert "note:" not in again and "already done" in again
    assert "note:" not in _extract("builtin")

    monkeypatch.setenv("REPACKCTL_EXTRACT__SHARD", "32")
    out = _extract("builtin")
    assert "shard 32 (env REPACKCTL_EXTRACT__SHARD) not applied" in out
    assert "--chunk" not in out.split("not applied")[0].split("keeps its layout")[1]
