"""Edited metadata that let readers take data unchecked: an array whose ``zarr.json`` lost the
crc32c codec the cache wrote it with, and a features group whose recorded encoder weights
digest is not the one its id names.

Found by an audit of silent wrong answers (session 36, D item 11): with the codec removed,
`cache verify` said ok and readers read the chunks unchecked (a damaged chunk taken for data);
with ``encoder.weights_sha256`` edited, `pack train` recorded the edited digest as its encoder.

Real Zarr caches written by `repackctl extract` (patchpix, 32 px, 16 images).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry
from repackctl.cache.versions import RECORD
from repackctl.errors import CacheError

ENTRY = "builtin-n16--train--32px"
base_cache, cache = patchpix_fixtures("edited-meta")


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _drop_crc(doc: dict) -> None:
    """Remove the crc32c codec of an array (the inner chunks' of a sharded one)."""
    codecs = doc["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    codecs[:] = [c for c in codecs if c["name"] != "crc32c"]


def _features(cache: Path) -> Path:
    (group,) = [p for p in (cache / ENTRY / "features").iterdir() if p.is_dir()]
    return group


def _verify(cache: Path, *needles: str) -> str:
    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(cache))
    for needle in needles:
        assert needle in out, (needle, out)
    return out


def test_an_entry_array_without_its_checksum_codec_is_refused(cache) -> None:
    _edit(cache / ENTRY / "images" / "zarr.json", _drop_crc)
    _verify(cache, "images: its zarr.json lacks the crc32c checksum codec", "images/zarr.json")
    entry = DatasetEntry.open(str(cache), ENTRY)
    with pytest.raises(CacheError, match="images: its zarr.json lacks the crc32c"):
        entry.images[:8]  # before: read unchecked
    assert entry.labels[:].shape == (16,)  # the intact arrays are read
    cli_ok("cache", "ls", "--cache", str(cache))  # listed (and removable) as before


def test_a_features_array_without_its_checksum_codec_is_refused(cache) -> None:
    group = _features(cache)
    _edit(group / "tokens" / "zarr.json", _drop_crc)
    _verify(cache, f"features/{group.name}/tokens: its zarr.json lacks")
    feats = DatasetEntry.open(str(cache), ENTRY).features(group.name)
    with pytest.raises(CacheError, match="tokens: its zarr.json lacks the crc32c"):
        feats["tokens"]
    assert feats.done_mask().shape == (16,)


def test_an_entry_made_before_checksums_is_read_but_not_one_edited(cache) -> None:
    """No array of the entry has the codec and it records no package versions: written by a
    version before checksums, read as before; with the record (or one array with the codec
    left), the codecs were edited away."""
    for name in ("images", "labels", "keys", "done"):
        _edit(cache / ENTRY / name / "zarr.json", _drop_crc)
    with pytest.raises(CacheError, match="images: its zarr.json lacks"):
        DatasetEntry.open(str(cache), ENTRY).images[:8]  # it records package versions
    _edit(cache / ENTRY / "zarr.json", lambda d: d["attributes"].pop(RECORD))
    entry = DatasetEntry.open(str(cache), ENTRY)
    assert entry.images[:8].shape == (8, 32, 32, 3)  # (blosc ignores the checksum bytes kept)


def test_a_features_digest_that_is_not_its_ids_is_refused(cache) -> None:
    group = _features(cache)
    digest = group.name.rsplit("--", 1)[1]

    def edit(doc: dict) -> None:
        doc["attributes"]["encoder"]["weights_sha256"] = "0" * 64

    _edit(group / "zarr.json", edit)
    _verify(cache, "encoder.weights_sha256 0000000000…", f"id names {digest}")
    entry = DatasetEntry.open(str(cache), ENTRY)
    with pytest.raises(CacheError, match=f"the group's id names {digest}") as e:
        entry.features(group.name)  # before: opened, its edited digest recorded by pack train
    assert str(group / "zarr.json") in e.value.hint
    pack = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
    pack += ["--steps", "1", "--batch-size", "4", "--ch", "8", "-c", "4", "--device", "cpu"]
    pack += ["--cache", str(cache), "--runs", str(cache.parent / "runs"), "--name", "p"]
    out = cli_refused(CacheError.exit_code, *pack)  # before: trained, rc 0
    assert f"the group's id names {digest}" in out, out
