"""`pack encode` never computes the channel stats over a lost per-shard sum read as zeros.

A rerun of `pack encode` (the command that train dit's stats check names) found every row done
and recombined the stats from ``partial_sum`` / ``partial_count``: a shard whose chunks were lost
read as zeros, so the stats covered the other shards only, and were written over the group's
attributes and the model's ``latent_stats.json``, where a training then found them consistent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support.caches import packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n32--train--32px"


def test_lost_partial_sums_are_refused_then_repaired(tmp_path: Path) -> None:
    root = packed_cache(tmp_path / "cache", 32)  # two shards of 16
    runs = tmp_path / "runs"
    common = ["--cache", str(root), "--runs", str(runs), "--device", "cpu"]
    (stats_file,) = runs.glob("pk/checkpoints/*/latent_stats.json")
    before = stats_file.read_text()
    (lid,) = DatasetEntry.open(str(root), ENTRY).latent_ids()
    group = root / ENTRY / "latents" / lid
    attrs_before = json.loads((group / "zarr.json").read_text())["attributes"]["stats"]
    shutil.rmtree(group / "partial_sum" / "c" / "1")  # the sums of shard 1 (rows 16–31) lost
    (group / "partial_count" / "c" / "1").unlink()

    out = cli_refused(6, "pack", "encode", "--run", "pk", *common)
    assert "partial_sum: missing chunk c/1/0" in out and "rows 16–31" in out, out
    assert f"repackctl cache verify {ENTRY} --repair" in out, out
    assert stats_file.read_text() == before  # the model's stats not overwritten
    attrs = json.loads((group / "zarr.json").read_text())["attributes"]["stats"]
    assert attrs == attrs_before

    cli_ok("cache", "verify", "--repair", "--cache", str(root))
    out = cli_ok("pack", "encode", "--run", "pk", *common)
    assert "written now │ 16" in out and "already done │ 16" in out, out
    after = json.loads(stats_file.read_text())
    assert after["count"] == json.loads(before)["count"]
    assert after["mean"] == json.loads(before)["mean"]
