"""Damaged cache arrays that the training readers met with a traceback or a wrong diagnosis
(audit D, findings 4–8): an entry's arrays with an edited zarr.json ``shape``, a corrupt or
lost chunk of a latents group's per-shard sums, a corrupt or lost ``labels`` chunk. Each is an
``Error:`` naming the array with a ``Hint:`` that works when followed, never a traceback, and
never a training on fill values.

Real Zarr caches written through the command line (the shared 32-row patchpix stack:
`extract`, `pack train`, `pack encode`), a file damaged on disk, then the real commands
in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_packed_cache, use_roots
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import CacheError

CPU = ["--device", "cpu"]
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "32"]
PACK = ["pack", "train", *SRC, "--steps", "1", "--batch-size", "8", "--ch", "16", "-c", "4", *CPU]
TRAIN = ["train", "dit", "-b", "8", "--steps", "1", "--image-every", "0", *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged-sums")
    shared_packed_cache(tmp_path_factory, root / "cache", 32)  # built in one thread
    return root


@pytest.fixture
def entry(packed, tmp_path, monkeypatch) -> Path:
    """A private copy of the stack; the path of its one cache entry."""
    use_roots(packed, tmp_path, monkeypatch)
    (name,) = list_entries(str(tmp_path / "cache"))
    return tmp_path / "cache" / name


def _latents(entry: Path) -> Path:
    (pack_id,) = DatasetEntry.open(str(entry.parent), entry.name).latent_ids()
    return entry / "latents" / pack_id


def _flip(path: Path) -> None:
    """Two bytes in the middle of ``path`` changed: its checksum fails."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] ^= 255
    data[i + 1] ^= 85
    path.write_bytes(bytes(data))


def _repair_named(out: str, entry: str, producer: str) -> None:
    assert f"repackctl cache verify {entry} --repair" in out and producer in out, out


def test_edited_shapes_of_entry_arrays_are_named_not_a_traceback(entry, tmp_path):
    """Finding 4: numpy's broadcast ValueError in `pack train` and `train dit`."""
    for name in ("images", "labels", "done", "keys"):
        meta = entry / name / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["shape"][0] = 64
        meta.write_text(json.dumps(doc))
    out = cli_refused(CacheError.exit_code, *PACK, "--name", "p2")
    assert "different numbers of rows" in out and "zarr.json" in out, out
    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert f"cache entry {entry.name}: its arrays hold different numbers of rows" in out, out
    assert "64 in images, labels, keys, done" in out and "32 in latents/" in out, out
    assert f"repackctl cache rm {entry.name} --yes" in out, out
    assert not (tmp_path / "runs" / "d").exists() and not (tmp_path / "runs" / "p2").exists()


@pytest.mark.parametrize("array", ["partial_sum", "partial_sumsq"])
def test_dit_refuses_a_corrupt_chunk_of_the_sums_as_pack_encode_does(entry, array):
    """Finding 5: zarr's checksum ValueError from combine_partials (a traceback)."""
    _flip(_latents(entry) / array / "c" / "0" / "0")
    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert f"{array}: corrupt chunk c/0/0 (the sums of rows 0–15)" in out, out
    _repair_named(out, entry.name, "repackctl pack encode --run pk")


def test_a_lost_chunk_of_the_sums_gets_the_repair_that_works(entry):
    """Finding 8: "zarr.json edited" with a `pack encode` hint that `pack encode` refuses.
    The hint, followed, lets the training run."""
    (_latents(entry) / "partial_sum" / "c" / "1" / "0").unlink()
    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert "partial_sum: missing chunk c/1/0 (the sums of rows 16–31)" in out, out
    assert "zarr.json edited" not in out, out
    _repair_named(out, entry.name, "repackctl pack encode --run pk")
    cli_ok("cache", "verify", entry.name, "--repair")
    cmd = out.split("then `", 1)[1].split("`", 1)[0].split()[1:]  # the hint's pack encode
    cli_ok(*cmd, *CPU)
    cli_ok(*TRAIN, "--name", "d")


def test_a_lost_count_chunk_names_the_chunk_and_the_repair(entry):
    """Finding 8: "no valid samples …" / "check the cache entry"."""
    (_latents(entry) / "partial_count" / "c" / "0").unlink()
    out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "d")
    assert "partial_count: missing chunk c/0 (the sums of rows 0–15)" in out, out
    _repair_named(out, entry.name, "repackctl pack encode --run pk")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_pack_train_refuses_a_damaged_labels_chunk(entry, tmp_path, damage):
    """Findings 6 and 7: a traceback for a corrupt chunk; a lost one read as the fill value −1
    and fed to the shuffle's class check."""
    chunk = entry / "labels" / "c" / "0"
    _flip(chunk) if damage == "corrupt" else chunk.unlink()
    out = cli_refused(CacheError.exit_code, *PACK, "--name", "p2")
    assert f"cache entry {entry.name} labels" in out, out
    assert ("is missing" if damage == "missing" else "corrupt or truncated chunk") in out, out
    _repair_named(out, entry.name, "repackctl extract")
    assert not (tmp_path / "runs" / "p2").exists()


def test_the_shared_readers_turn_damage_into_cache_errors(entry):
    """The library side of the above, for the other callers (`cache verify` reads the sums with
    ``combine_partials``; any reader's ``written_rows`` meets masks of different lengths)."""
    import numpy as np

    from repackctl.cache.partials import combine_partials
    from repackctl.data.cached import written_rows

    ds = DatasetEntry.open(str(entry.parent), entry.name)
    _flip(_latents(entry) / "partial_sumsq" / "c" / "1" / "0")
    with pytest.raises(CacheError, match="partial_sumsq: corrupt or truncated chunk"):
        combine_partials(ds.latents(ds.latent_ids()[0]))
    with pytest.raises(CacheError, match=r"different numbers of rows \(32, 64\)"):
        written_rows(np.ones(64, np.uint8), np.ones(32, np.uint8))
