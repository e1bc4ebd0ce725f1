"""Which PNGs of a samples folder `evaluate fid` scores, and the content key of `--ref-cache`.

1. A folder `repackctl sample` finished (``protocol.json``) whose ``samples.npz`` is gone is
   scored on exactly the numbered PNGs its card counts: never ``grid.png`` or another image
   beside them, and a missing one is refused. External folders skip ``grid.png``.
2. Reference statistics of a cache entry are keyed by the crc32c the cache stores per chunk
   (no pass over the pixels); a rewritten chunk changes the key; an array without stored
   checksums is keyed by its pixels.

Everything is real: `repackctl sample` on the shared tiny stack, `repackctl extract` into a Zarr
cache in tmp_path, the built-in encoder's FD (``--fd-method cholesky``) against the built-in data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from conftest import one_torch_thread
from PIL import Image
from support.stack import FD_WEIGHTS
from typer.testing import CliRunner

from repackctl.cache.integrity import stored_checksums
from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cache.versions import RECORD
from repackctl.cli.app import app
from repackctl.errors import CacheError, DataError
from repackctl.evaluate.generative import cache_image_set, folder_sha256

runner = CliRunner()
SCORE = ["--ref", "builtin", "--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu"]
SCORE += FD_WEIGHTS
NUM = 6


# --------------------------------------------------------------------------- 1. PNG folders
@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch) -> dict[str, str]:
    """The shared tiny stack (a DiT run `dit-tiny`), a fresh samples root, one torch thread."""
    from support.stack import shared_stack

    stack = shared_stack(tmp_path_factory)
    monkeypatch.setenv("REPACKCTL_CACHE", stack["cache"])
    monkeypatch.setenv("REPACKCTL_RUNS", stack["runs"])
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    with one_torch_thread():
        yield stack


def _sample_cmd(out: Path) -> list[str]:
    return ["sample", "-r", "dit-tiny", "-n", str(NUM), "--steps", "2", "--device", "cpu",
            "--out", str(out)]  # fmt: skip


def _evaluate(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["evaluate", "fid", *args])
    return res.exit_code, res.output


def _numbered(folder: Path) -> list[Path]:
    return [folder / f"{i:06d}.png" for i in range(NUM)]


def test_a_sample_folder_without_npz_scores_its_numbered_pngs_only(env, tmp_path):
    folder = tmp_path / "run"
    res = runner.invoke(app, _sample_cmd(folder))
    assert res.exit_code == 0, res.output
    assert (folder / "grid.png").is_file() and (folder / "protocol.json").is_file()
    (folder / "samples.npz").unlink()
    # an image of the samples' size that is not one of them (e.g. a pick kept for a figure)
    shutil.copy(folder / "000002.png", folder / "favourite.png")

    code, out = _evaluate(str(folder), *SCORE)
    assert code == 0, out
    assert f"using all {NUM} samples" in out
    doc = json.loads((folder / "metrics.json").read_text())
    assert doc["metrics"]["fd_detail"]["n_generated"] == NUM  # not NUM + 1 (grid) or + 2
    assert doc["protocol"]["num_samples"] == NUM
    assert doc["metrics"]["generated"]["sha256"] == folder_sha256(_numbered(folder), folder)


def test_a_missing_numbered_png_is_refused_until_regenerated(env, tmp_path):
    folder = tmp_path / "run"
    cmd = _sample_cmd(folder)
    assert runner.invoke(app, cmd).exit_code == 0
    (folder / "samples.npz").unlink()
    (folder / "000003.png").unlink()
    code, out = _evaluate(str(folder), *SCORE)
    assert code == DataError.exit_code and "Traceback" not in out, out
    flat = " ".join(out.split())
    assert "Error:" in out and "Hint:" in out
    assert "000003.png" in flat and f"1 of the {NUM} sample images" in flat
    assert "rerun the same `repackctl sample`" in flat.split("Hint:")[1]
    assert not (folder / "metrics.json").exists()

    # the hint works: the same command writes the missing sample (and samples.npz) again
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert (folder / "000003.png").is_file() and (folder / "samples.npz").is_file()
    (folder / "samples.npz").unlink()  # scored from the PNGs again, now all there
    code, out = _evaluate(str(folder), *SCORE)
    assert code == 0, out
    assert json.loads((folder / "metrics.json").read_text())["protocol"]["num_samples"] == NUM


def test_an_external_folder_never_scores_grid_png(env, tmp_path):
    made = tmp_path / "run"
    assert runner.invoke(app, _sample_cmd(made)).exit_code == 0
    external = tmp_path / "external"  # the images copied elsewhere, without the card
    external.mkdir()
    for png in made.glob("*.png"):
        shutil.copy(png, external / png.name)
    assert (external / "grid.png").is_file()
    code, out = _evaluate(str(external), *SCORE)
    assert code == 0, out
    assert "grid.png" in out and "not scored" in out
    doc = json.loads((external / "metrics.json").read_text())
    assert doc["metrics"]["fd_detail"]["n_generated"] == NUM
    assert doc["protocol"]["sampler"] == "external"


def test_a_samples_npz_of_another_count_than_its_card_is_refused(env, tmp_path):
    folder = tmp_path / "run"
    assert runner.invoke(app, _sample_cmd(folder)).exit_code == 0
    npz = folder / "samples.npz"
    with np.load(npz) as z:
        images, labels = z["arr_0"], z["arr_1"]
    np.savez(npz, images[:-2], labels[:-2])  # cut after the card was written
    code, out = _evaluate(str(folder), *SCORE)
    flat = " ".join(out.split())
    assert code == DataError.exit_code and "Traceback" not in out, out
    assert f"holds {NUM - 2} samples but its protocol.json records {NUM}" in flat
    assert "Hint:" in out and not (folder / "metrics.json").exists()
    outside = tmp_path / "mine.npz"  # the same file outside the folder: external samples
    shutil.copy(npz, outside)
    code, out = _evaluate(str(outside), *SCORE)
    assert code == 0, out


# --------------------------------------------------------------------------- 2. --ref-cache key
def _entry(tmp_path: Path, seed: int = 0, n: int = 12) -> tuple[str, str, Path]:
    """(cache, entry, photos): ``n`` random 32-px images extracted with 4-image chunks in
    8-image shards (two shards, the last one partial)."""
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(photos / f"{i:02d}.png")
    args = ["extract", "-e", "patchpix", "--data", f"imagefolder:{photos}", "--resolution",
            "32", "--chunk", "4", "--shard", "8"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    cache = str(tmp_path / "cache")
    (entry,) = list_entries(cache)
    return cache, entry, photos


def _images_dir(cache: str, entry: str) -> Path:
    return Path(cache) / entry / "images"


def _checksums_from_files(cache: str, entry: str, inner: int = 4) -> list[tuple[int, int, int]]:
    """(first row, bytes, crc32c) of every chunk, parsed from the shard files independently of
    repackctl, each crc32c checked against the chunk's bytes."""
    out = []
    shards = sorted((_images_dir(cache, entry) / "c").iterdir(), key=lambda p: int(p.name))
    for k, d in enumerate(shards):
        data = (d / "0" / "0" / "0").read_bytes()
        table = np.frombuffer(data[-(2 * 16 + 4) : -4], dtype="<u8").reshape(2, 2)
        for j, (offset, nbytes) in enumerate(table.tolist()):
            if offset == 2**64 - 1:
                continue  # past the end of the array (the partial last shard)
            chunk = data[offset : offset + nbytes]
            crc = int.from_bytes(chunk[-4:], "little")
            assert google_crc32c.value(chunk[:-4]) == crc
            out.append((k * 8 + j * inner, nbytes, crc))
    return out


def test_the_reference_key_is_read_from_stored_checksums_not_pixels(tmp_path):
    cache, entry, _ = _entry(tmp_path)
    images = cache_image_set(cache, entry, None)
    key = images.sha256
    opened = DatasetEntry.open(cache, entry)
    assert stored_checksums(opened.images, np.arange(12)) == _checksums_from_files(cache, entry)
    assert cache_image_set(cache, entry, None).sha256 == key  # same entry, same key
    assert cache_image_set(cache, entry, 8).sha256 != key  # another subset, another key

    # damage one chunk's pixel bytes behind zarr's back, its stored checksum kept: the key,
    # computed from stored checksums only, is unchanged, while any read of the pixels fails
    # its checksum (so no statistics are ever computed from the damaged bytes)
    shard = _images_dir(cache, entry) / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk's compressed pixels, before its checksum
    shard.write_bytes(bytes(data))
    damaged = cache_image_set(cache, entry, None)
    assert damaged.sha256 == key
    with pytest.raises(CacheError, match="corrupt"):
        list(damaged)
    # a lost shard has no checksum to read: the key falls back to the guarded pixel read, which
    # refuses it (never a key of zeros)
    shutil.rmtree(_images_dir(cache, entry) / "c" / "1")
    assert stored_checksums(opened.images, np.arange(12)) is None
    with pytest.raises(CacheError, match="missing"):
        cache_image_set(cache, entry, None).sha256  # noqa: B018


def test_a_rewritten_chunk_changes_the_key_and_the_statistics(tmp_path):
    cache, entry, _ = _entry(tmp_path)
    stats = ["evaluate", "stats", "--ref-cache", entry, "--extractor", "fd", "--device", "cpu",
             "--stats-dir", str(tmp_path / "stats"), *FD_WEIGHTS]  # fmt: skip
    with one_torch_thread():
        first = runner.invoke(app, stats)
        assert first.exit_code == 0 and "computed" in first.output, first.output
        key = cache_image_set(cache, entry, None).sha256
        arr = zarr.open_group(cache, mode="r+")[entry]["images"]
        before = arr[4:8]
        arr[4:8] = 255 - before  # one chunk rewritten with other pixels
        assert cache_image_set(cache, entry, None).sha256 != key
        changed = runner.invoke(app, stats)
        assert changed.exit_code == 0 and "computed" in changed.output, changed.output
        arr[4:8] = before  # the same pixels again: the same stored checksums, the same key
        assert cache_image_set(cache, entry, None).sha256 == key
        again = runner.invoke(app, stats)
        assert again.exit_code == 0 and "reused (same content hash)" in again.output
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 2


def test_an_array_without_stored_checksums_is_keyed_by_its_pixels(tmp_path):
    cache, entry, _ = _entry(tmp_path)
    group = zarr.open_group(cache, mode="r+")[entry]
    # the entry as a cache made before per-chunk checksums stored it: no array has the crc32c
    # codec and no package versions are recorded (one bare array among checksummed ones is an
    # edited zarr.json, refused: tests/cache/test_edited_array_metadata.py)
    for name, arr in list(group.arrays()):
        data, attrs = arr[...], dict(arr.attrs)
        bare = group.create_array(name, shape=arr.shape, chunks=arr.chunks, shards=arr.shards,
                                  dtype=arr.dtype, fill_value=arr.fill_value,
                                  compressors=[zarr.codecs.BloscCodec(cname="zstd")],
                                  overwrite=True)  # fmt: skip
        bare[...] = data
        bare.attrs.update(attrs)
    if RECORD in group.attrs:
        del group.attrs[RECORD]
    old = group["images"]
    assert stored_checksums(DatasetEntry.open(cache, entry).images, np.arange(12)) is None
    key = cache_image_set(cache, entry, None).sha256
    assert cache_image_set(cache, entry, None).sha256 == key
    old[5, 0, 0, 0] ^= 1  # one pixel changed: the pixel hash sees it
    assert cache_image_set(cache, entry, None).sha256 != key
    old[5, 0, 0, 0] ^= 1
    assert cache_image_set(cache, entry, None).sha256 == key
