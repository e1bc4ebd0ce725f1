"""`pack encode` never computes the channel stats over a lost per-shard sum read as zeros.

A rerun of `pack encode` (the command that train dit's stats check names) found every row done
and recombined the stats from ``partial_sum`` / ``partial_count``: a shard whose chunks were lost
read as zeros, so the stats covered the other shards only, and were written over the group's
attributes and the model's ``latent_stats.json``, where a training then found them consistent.

Nor over latents that are not finite: features with a NaN row encoded to NaN latents, and the
NaN channel means and stds were written with exit 0 (`train dit` then refused them as "a std is
≤ 0"). Now it stops naming the rows and the commands that remake them, and records nothing.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n32--train--32px"

# the reruns encode as the shared build did: in one thread (CPU reductions round by thread count)
pytestmark = pytest.mark.usefixtures("one_thread")


def _packed(tmp_path: Path, factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path, str]:
    """A packed 32-image cache (two shards of 16), a private copy of the shared one: its root,
    the common flags, the model's ``latent_stats.json`` and that file's text."""
    root = shared_packed_cache(factory, tmp_path / "cache", 32)
    runs = tmp_path / "runs"
    common = ["--cache", str(root), "--runs", str(runs), "--device", "cpu"]
    (stats_file,) = runs.glob("pk/checkpoints/*/latent_stats.json")
    return root, common, stats_file, stats_file.read_text()


def test_lost_partial_sums_are_refused_then_repaired(tmp_path: Path, tmp_path_factory) -> None:
    root, common, stats_file, before = _packed(tmp_path, tmp_path_factory)
    (lid,) = DatasetEntry.open(str(root), ENTRY).latent_ids()
    group = root / ENTRY / "latents" / lid
    attrs_before = json.loads((group / "zarr.json").read_text())["attributes"]["stats"]
    shutil.rmtree(group / "partial_sum" / "c" / "1")  # the sums of shard 1 (rows 16–31) lost
    (group / "partial_count" / "c" / "1").unlink()

    # without the garbage collector: the refused command's reader locks are released when it
    # reports its error (``cli.common.drop_frames``), not when a collection happens to run
    gc.disable()
    try:
        out = cli_refused(6, "pack", "encode", "--run", "pk", *common)
        assert "partial_sum: missing chunk c/1/0" in out and "rows 16–31" in out, out
        assert f"repackctl cache verify {ENTRY} --repair" in out, out
        assert stats_file.read_text() == before  # the model's stats not overwritten
        attrs = json.loads((group / "zarr.json").read_text())["attributes"]["stats"]
        assert attrs == attrs_before
        cli_ok("cache", "verify", "--repair", "--cache", str(root))
    finally:
        gc.enable()
    out = cli_ok("pack", "encode", "--run", "pk", *common)
    assert "written now │ 16" in out and "already done │ 16" in out, out
    after = json.loads(stats_file.read_text())
    assert after["count"] == json.loads(before)["count"]
    assert after["mean"] == json.loads(before)["mean"]


def test_nan_latents_give_no_stats_and_the_hint_remakes_them(
    tmp_path: Path, tmp_path_factory
) -> None:
    root, common, stats_file, before = _packed(tmp_path, tmp_path_factory)
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
