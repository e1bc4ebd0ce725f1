"""`pack encode` refuses channel stats over latents that are not finite.

Features with a NaN row encoded to NaN latents, and `pack encode` wrote NaN channel means and
stds into the latents' attributes and the model's ``latent_stats.json``, with exit 0; `train
dit` then refused them as "a std is ≤ 0". Now it stops naming the rows and the commands that
remake them, and records nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support.caches import packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n32--train--32px"


def test_nan_latents_give_no_stats_and_the_hint_remakes_them(tmp_path: Path) -> None:
    root = packed_cache(tmp_path / "cache", 32)  # two shards of 16
    runs = tmp_path / "runs"
    common = ["--cache", str(root), "--runs", str(runs), "--device", "cpu"]
    (stats_file,) = runs.glob("pk/checkpoints/*/latent_stats.json")
    before = stats_file.read_text()
    entry = DatasetEntry.open(str(root), ENTRY)
    (fid,) = entry.feature_ids()
    (lid,) = entry.latent_ids()
    tokens = entry.features(fid)["tokens"]
    rows = tokens[19:20]
    rows[:] = np.nan
    tokens[19:20] = rows  # a readable chunk: only the values are wrong
    cli_ok("cache", "rm", ENTRY, "--latents", lid, "--yes", "--cache", str(root))

    out = cli_refused(6, "pack", "encode", "--run", "pk", *common)
    assert "rows 16–31" in out and "NaN" in out, out
    assert f"repackctl cache rm {ENTRY} --features {fid} --yes" in out, out
    assert stats_file.read_text() == before  # the model's stats not overwritten
    group = json.loads((root / ENTRY / "latents" / lid / "zarr.json").read_text())
    assert "stats" not in group["attributes"] and not group["attributes"].get("complete")

    # the hint's commands give finite stats again
    cli_ok("cache", "rm", ENTRY, "--features", fid, "--yes", "--cache", str(root))
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", "32"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "16", "--num-workers", "0",
           "--cache", str(root))  # fmt: skip
    cli_ok("cache", "rm", ENTRY, "--latents", lid, "--yes", "--cache", str(root))
    cli_ok("pack", "encode", "--run", "pk", *common)
    assert json.loads(stats_file.read_text())["mean"] == json.loads(before)["mean"]
