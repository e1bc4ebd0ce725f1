"""The channel stats of packed latents sit in their group's attributes (``zarr.json``, no
checksum of its own). They are checked against the per-shard sums ``pack encode`` stores in
checksummed arrays: a changed digit would normalise every latent of a DiT training (and scale
every sample of that run) by another value, silently.

Real components: a real Zarr cache and pack run through the command line (extract → pack train →
pack encode), then `train dit` through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import CacheError

N = 32
TRAIN = ["train", "dit", "-b", "8", "--steps", "2", "--device", "cpu", "--image-every", "0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stats")
    shared_packed_cache(tmp_path_factory, root / "cache", N)  # built in one thread
    return root


@pytest.fixture
def roots(base, tmp_path, monkeypatch) -> Path:
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
        monkeypatch.setenv(f"REPACKCTL_{name.upper()}", str(tmp_path / name))
    return tmp_path


def _latents(cache: Path):
    (entry,) = list_entries(str(cache))
    ds = DatasetEntry.open(str(cache), entry)
    (pack_id,) = ds.latent_ids()
    return ds.latents(pack_id)


def test_stats_changed_in_the_attributes_are_refused_and_pack_encode_mends_them(roots):
    grp = _latents(roots / "cache")
    stats = dict(grp.attrs["stats"])
    good = list(stats["std"])
    stats["std"] = [good[0] * 1.5, *good[1:]]  # one digit of zarr.json: the first channel's std
    grp.group.attrs["stats"] = stats

    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert "channel stats in the attributes of packed latents" in out
    assert "differ from the checksummed sums" in out
    assert "repackctl pack encode --run pk" in out
    assert not (roots / "runs" / "d").exists()  # refused before the run was written

    with one_torch_thread():
        cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")
        assert _latents(roots / "cache").attrs["stats"]["std"] == good
        out = cli_ok(*TRAIN, "--name", "d")
    assert (roots / "runs" / "d" / "checkpoints").is_dir()


def test_latents_without_the_sums_keep_their_stats(roots):
    """Latents written before the sums were stored are read as they are."""
    grp = _latents(roots / "cache")
    for name in ("partial_sum", "partial_sumsq", "partial_count"):
        del grp.group[name]
    with one_torch_thread():
        cli_ok(*TRAIN, "--name", "d")
