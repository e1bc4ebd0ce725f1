"""A lost ``keys`` or ``labels`` chunk stops `captions` and `train dit`; it is never read as
empty keys (every image of it marked done "no caption") or as class 0.

Real Zarr caches written through the command line (`extract`, `pack train`, `pack encode`),
a chunk file deleted on disk, then the real `captions` / `train dit` commands in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache, use_roots
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import CacheError

CPU = ["--device", "cpu"]
ENTRY = "builtin-n64--train--32px"
EXTRACT = ["extract", "-n", "64", "--resolution", "32", "--shard", "32", "--chunk", "32", *CPU]
CAPTIONS = ["captions", "--max-length", "8", *CPU]
TRAIN = ["train", "dit", "-b", "8", "--steps", "2", "--image-every", "0", *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _repair_named(out: str, entry: str) -> None:
    assert f"repackctl cache verify {entry} --repair" in out and "repackctl extract" in out, out


def test_captions_refuse_a_lost_keys_chunk_and_run_after_the_repair(cache_root):
    cli_ok(*EXTRACT)
    (Path(cache_root) / ENTRY / "keys" / "c" / "1").unlink()
    out = cli_refused(CacheError.exit_code, *CAPTIONS)
    assert f"cache entry {ENTRY} keys" in out and "rows 32–63 is missing" in out
    _repair_named(out, ENTRY)
    assert DatasetEntry.open(cache_root, ENTRY).text_ids() == []  # nothing written

    assert "32 rows marked pending" in cli_ok("cache", "verify", ENTRY, "--repair")
    cli_ok(*EXTRACT)
    out = cli_ok(*CAPTIONS)
    assert "written now │ 64" in out and "no caption" not in out, out


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lost-labels")
    shared_packed_cache(tmp_path_factory, root / "cache", 32)  # built in one thread
    return root


def test_dit_training_refuses_a_lost_labels_chunk(packed, tmp_path, monkeypatch):
    use_roots(packed, tmp_path, monkeypatch)
    (entry,) = list_entries(str(tmp_path / "cache"))
    (tmp_path / "cache" / entry / "labels" / "c" / "1").unlink()  # rows 16–31
    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert f"cache entry {entry} labels" in out and "is missing" in out
    _repair_named(out, entry)
    assert not (tmp_path / "runs" / "d").exists()  # refused before the run was written


def test_pending_rows_that_verify_finds_name_the_command_that_writes_them(
    packed, tmp_path, monkeypatch
):
    """A `cache verify --repair` killed after it marked rows pending but before it printed the
    commands to run left `cache verify` saying only "N samples pending"."""
    import zarr

    use_roots(packed, tmp_path, monkeypatch)
    (entry,) = list_entries(str(tmp_path / "cache"))
    ds = DatasetEntry.open(str(tmp_path / "cache"), entry)
    (latents,) = ds.latent_ids()
    done = zarr.open_array(
        str(tmp_path / "cache" / entry / "latents" / latents / "done"), mode="r+"
    )
    done[:16] = 0  # as the killed repair left it
    out = cli_refused(CacheError.exit_code, "cache", "verify", entry)
    assert "16 samples pending" in out and "repackctl pack encode --run pk" in out, out


@pytest.mark.parametrize("array", ["keys", "labels"])
def test_extract_rerun_names_the_repair_for_a_lost_keys_or_labels_chunk(cache_root, array):
    # the rerun's listing check read the lost chunk as empty keys / labels −1, called it
    # changed data and hinted `cache rm` of the whole entry (its features, latents, captions)
    cli_ok(*EXTRACT)
    (Path(cache_root) / ENTRY / array / "c" / "1").unlink()
    out = cli_refused(CacheError.exit_code, *EXTRACT)
    assert f"cache entry {ENTRY} {array}" in out and "is missing" in out, out
    assert "cache rm" not in out and "the data changed" not in out, out
    _repair_named(out, ENTRY)
    assert "32 rows marked pending" in cli_ok("cache", "verify", ENTRY, "--repair")
    assert "written now │ 32" in cli_ok(*EXTRACT)
    assert "ok" in cli_ok("cache", "verify", ENTRY)
