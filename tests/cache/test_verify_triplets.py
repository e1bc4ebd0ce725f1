"""`cache verify` checks refiner triplets like every other group: pending rows and NaN/inf rows.

It read the triplet groups only for damaged chunks, so an unfinished triplet build (rows pending)
or a NaN latent row passed as "ok" with exit 0, while the same in features, latents or caption
features was reported.
"""

from __future__ import annotations

import shutil

import numpy as np
from conftest import one_torch_thread
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.cache.store import PENDING, DatasetEntry
from repackctl.errors import CacheError
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets, triplet_group_name


def test_pending_and_nan_triplet_rows_are_reported(tmp_path, tmp_path_factory, monkeypatch):
    stack = shared_stack(tmp_path_factory)
    cache, runs = str(tmp_path / "cache"), str(tmp_path / "runs")
    shutil.copytree(stack["cache"], cache)
    shutil.copytree(stack["runs"], runs)
    monkeypatch.setenv("REPACKCTL_CACHE", cache)
    pack = load_pack("pack-tiny", runs=runs)
    entry = DatasetEntry.open(cache, pack.extra["cache"]["entry"])
    with one_torch_thread():
        build_triplets(entry, pack.extra["cache"]["features"], pack, batch_size=8)
    gid = triplet_group_name(pack.pack_id, 0.0)
    group = entry.group["triplets"][gid]
    assert entry.shard == 8 and entry.n == 16
    assert f"{entry.name}: ok" in cli_ok("cache", "verify", entry.name)  # healthy triplets

    latent = group["latent"]
    rows = latent[0:1]
    rows[:] = np.nan
    latent[0:1] = rows  # a readable chunk, valid checksum: only the NaN scan sees it
    group["done"][8:16] = np.full(8, PENDING, np.uint8)  # the second shard never finished

    out = cli_refused(CacheError.exit_code, "cache", "verify", entry.name)
    assert f"triplets/{gid}: latent: 1 samples with NaN/inf" in out, out
    pending = f"triplets/{gid}: 8 samples pending (`repackctl refine train --name RUN --pack-run"
    assert f"{pending} pack-tiny --entry {entry.name}`" in out, out
