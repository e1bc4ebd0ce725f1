"""A ``zarr.json`` of the cache that cannot be read (cut short, overwritten) is named, never read
as "no entries" nor met with a traceback, and nothing is removed on its account.

Before: a damaged root ``zarr.json`` gave a JSONDecodeError traceback in `cache ls`, `cache
verify` and `extract`; one damaged entry's ``zarr.json`` made `cache ls` print "no cache entries"
(the intact entries hidden too) and `cache verify` print nothing, exit 0; a damaged features
group gave tracebacks in `cache ls` and `cache verify`.

Real Zarr caches written by `repackctl extract` (patchpix, 32 px: a train and a val entry).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from support.caches import patchpix_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import ROOT_META
from repackctl.errors import CacheError

TRAIN, VAL = "builtin-n16--train--32px", "builtin-n8--val--32px"
EXTRACT_VAL = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", "8"]
EXTRACT_VAL += ["--split", "val", "--chunk", "8", "--shard", "8", "--num-workers", "0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    cache = patchpix_cache(tmp_path_factory.mktemp("damaged") / "cache", 16)
    cli_ok(*EXTRACT_VAL, "--cache", str(cache))
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [TRAIN, VAL]
    return cache


@pytest.fixture
def cache(base, tmp_path, monkeypatch) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(base, dst)
    monkeypatch.setenv("REPACKCTL_CACHE", str(dst))
    return dst


def _digest(folder: Path) -> str:
    """Every file's path and bytes below ``folder``: what a refusal must leave as it was."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _feature_group(cache: Path, entry: str) -> Path:
    (group,) = [p for p in (cache / entry / "features").iterdir() if p.is_dir()]
    return group


def test_a_damaged_root_metadata_file_is_named_by_every_cache_command(cache):
    (cache / "zarr.json").write_text("{")
    before = _digest(cache)
    for args in (["cache", "ls"], ["cache", "verify"], EXTRACT_VAL):
        out = cli_refused(CacheError.exit_code, *args)
        assert f"{cache / 'zarr.json'} is not valid JSON" in out, out
        assert ROOT_META in out  # what to write back: the root holds no data
    assert _digest(cache) == before  # nothing rewritten for the user


def test_one_damaged_entry_is_listed_as_damaged_beside_the_intact_one(cache):
    meta = cache / VAL / "zarr.json"
    meta.write_text("{")
    before = _digest(cache)
    out = cli_ok("cache", "ls")
    assert TRAIN in out and f"{VAL} damaged" in out  # "no cache entries" before
    assert f"Warning: cache entry {VAL}: {meta} is not valid JSON" in out
    listing = json.loads(cli_ok("cache", "ls", "--json"))
    assert [e["name"] for e in listing["entries"]] == [TRAIN]
    assert listing["damaged"][0]["entry"] == VAL and listing["damaged"][0]["file"] == str(meta)
    out = cli_refused(CacheError.exit_code, "cache", "verify")
    assert f"{meta} is not valid JSON" in out and "1 of 2 entries have problems" in out
    out = cli_refused(CacheError.exit_code, *EXTRACT_VAL)  # would have recreated the entry
    assert f"cache entry '{VAL}'" in out and "has damaged metadata" in out and str(meta) in out
    assert _digest(cache) == before


def test_a_damaged_features_group_is_named_by_listing_verify_and_readers(cache):
    group = _feature_group(cache, VAL)
    meta = group / "tokens" / "zarr.json"  # an array's metadata, below the group's
    meta.write_text("[]")
    before = _digest(cache)
    out = cli_ok("cache", "ls")
    assert f"{group.name} (damaged)" in out
    for args in (["cache", "verify"], ["cache", "verify", "--repair"]):
        out = cli_refused(CacheError.exit_code, *args)
        assert f"{meta} is not zarr metadata" in out, out
    out = cli_refused(CacheError.exit_code, *EXTRACT_VAL)
    assert f"features/{group.name} of cache entry {VAL} has damaged metadata" in out
    assert _digest(cache) == before  # --repair does not touch metadata that may describe data


def test_cache_rm_removes_a_damaged_group_when_asked(cache):
    group = _feature_group(cache, VAL)
    (group / "zarr.json").write_text("{")
    cli_ok("cache", "rm", VAL, "--features", group.name, "--yes")
    assert not group.exists() and (cache / VAL / "images").is_dir()
    (cache / VAL / "zarr.json").write_text("{")
    cli_ok("cache", "rm", VAL, "--yes")
    assert not (cache / VAL).exists() and (cache / TRAIN / "images").is_dir()
    assert f"{TRAIN} 16/16" in cli_ok("cache", "ls")
