"""The channel stats of a latents group are never taken from, or left out of step with, its sums.

* The pixel latents (``pack.pixels.write_pixel_latents``, the pixel arm of
  ``benchmarks/reproduce_small.py``) recombined their stats over a lost per-shard sum read as
  zeros, silently (``pack encode`` refused that): now the same check refuses it, naming the
  chunk and the repair.
* `cache verify` did not compare the stats in a group's attributes with its per-shard sums: an
  edited ``zarr.json`` passed verify (exit 0) while `train dit` refused it, or, with a sum
  changed after the stats were written, a rerun wrote wrong stats. Now a lasting problem naming
  the group and the command that fixes it (`--repair` leaves attributes as they are).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.caches import patchpix_fixtures, shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError
from repackctl.pack.pixels import write_pixel_latents

ENTRY = "builtin-n32--train--32px"
PIX = "builtin-n16--train--32px"
base_cache, cache = patchpix_fixtures("round6-pixels")


def _attrs(group: Path) -> dict:
    return json.loads((group / "zarr.json").read_text())


def _set_stats(group: Path, change) -> None:
    """Edit the ``stats`` attribute in the group's ``zarr.json`` (no checksum covers it)."""
    meta = _attrs(group)
    change(meta["attributes"]["stats"])
    (group / "zarr.json").write_text(json.dumps(meta))


def test_pixel_latents_refuse_a_lost_partial_sum_then_repair(cache: Path) -> None:
    entry = DatasetEntry.open(str(cache), PIX)
    res = write_pixel_latents(entry, 8)
    group = cache / PIX / "latents" / res.latent_id
    before = _attrs(group)["attributes"]["stats"]
    (group / "partial_sum" / "c" / "1" / "0").unlink()  # the sums of shard 1 (rows 8–15) lost
    (group / "partial_count" / "c" / "1").unlink()

    with pytest.raises(CacheError) as e:
        write_pixel_latents(DatasetEntry.open(str(cache), PIX), 8)
    assert "partial_sum: missing chunk c/1/0" in e.value.message, e.value.message
    assert "rows 8–15" in e.value.message, e.value.message
    assert f"repackctl cache verify {PIX} --repair" in (e.value.hint or "")
    assert _attrs(group)["attributes"]["stats"] == before  # nothing recorded over 8 rows

    out = cli_refused(6, "cache", "verify", PIX, "--cache", str(cache))
    assert "partial_sum: missing chunk c/1/0" in out, out
    cli_ok("cache", "verify", PIX, "--repair", "--cache", str(cache))
    again = write_pixel_latents(DatasetEntry.open(str(cache), PIX), 8)
    assert again.written == 8 and again.stats["mean"] == before["mean"]
    assert again.stats["count"] == before["count"]
    cli_ok("cache", "verify", PIX, "--cache", str(cache))


def test_verify_names_the_pixel_producer_for_edited_pixel_stats(cache: Path) -> None:
    res = write_pixel_latents(DatasetEntry.open(str(cache), PIX), 8)
    group = cache / PIX / "latents" / res.latent_id
    _set_stats(group, lambda s: s["std"].__setitem__(3, s["std"][3] * 1.01))
    out = cli_refused(6, "cache", "verify", PIX, "--cache", str(cache))
    assert f"latents/{res.latent_id}: the channel stats in its attributes differ" in out, out
    assert "benchmarks/reproduce_small.py" in out and "pack encode --run RUN" not in out, out
    write_pixel_latents(DatasetEntry.open(str(cache), PIX), 8)  # what the hint names
    cli_ok("cache", "verify", PIX, "--cache", str(cache))


@pytest.fixture(scope="module")
def packed_base(tmp_path_factory) -> Path:
    return shared_packed_cache(
        tmp_path_factory, tmp_path_factory.mktemp("round6-packed") / "cache", 32
    )


@pytest.fixture
def packed(packed_base: Path, tmp_path: Path) -> tuple[Path, list[str], str]:
    """A private copy of the packed cache and its runs: root, the common flags, the latent id."""
    import shutil

    shutil.copytree(packed_base, tmp_path / "cache")
    shutil.copytree(packed_base.parent / "runs", tmp_path / "runs")
    root = tmp_path / "cache"
    common = ["--cache", str(root), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    (lid,) = DatasetEntry.open(str(root), ENTRY).latent_ids()
    return root, common, lid


def test_verify_reports_edited_stats_and_pack_encode_rewrites_them(packed) -> None:
    root, common, lid = packed
    group = root / ENTRY / "latents" / lid
    good = _attrs(group)["attributes"]["stats"]
    cli_ok("cache", "verify", ENTRY, "--cache", str(root))
    _set_stats(group, lambda s: s["mean"].__setitem__(0, s["mean"][0] + 0.05))

    out = cli_refused(6, "cache", "verify", ENTRY, "--cache", str(root))
    assert f"latents/{lid}: the channel stats in its attributes differ from its per-shard " in out
    assert "repackctl pack encode --run pk" in out, out
    # not repaired automatically: the attributes stay, and the problem is still named
    out = cli_refused(6, "cache", "verify", ENTRY, "--repair", "--cache", str(root))
    assert "differ from its per-shard sums" in out, out
    assert _attrs(group)["attributes"]["stats"]["mean"][0] != good["mean"][0]

    cli_ok("pack", "encode", "--run", "pk", *common)  # the fix the hint names
    assert _attrs(group)["attributes"]["stats"]["mean"] == good["mean"]
    cli_ok("cache", "verify", ENTRY, "--cache", str(root))


def test_verify_names_the_rewrite_when_a_sum_no_longer_fits_the_latents(packed) -> None:
    root, _, lid = packed
    entry = DatasetEntry.open(str(root), ENTRY)
    psum = entry.latents(lid)["partial_sum"]
    row = np.asarray(psum[1:2]) * 1.5  # a checksummed rewrite: the chunk reads fine
    psum[1:2] = row

    out = cli_refused(6, "cache", "verify", ENTRY, "--cache", str(root))
    assert "the sums of rows 16–31 are not those of the stored latents" in out, out
    assert f"repackctl cache rm {ENTRY} --latents {lid} --yes" in out, out
