"""Lost or corrupt cache chunks, unsupported sizes and other data are refused, never used.

Real Zarr caches written by `repackctl extract` (the built-in encoder at 32 px, 96 images in
shards of 16) and a real 5-step `pack train` run, all through the CLI in-process. Each test
damages a private copy of that cache and checks that the command stops with an `Error:` and a
`Hint:` (no traceback) and that nothing wrong was written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, use_sandbox
from typer.testing import CliRunner

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry, list_entries
from repackctl.cli.app import app

runner = CliRunner()
ENTRY = "builtin-n96--train--32px"
EXTRACT = ["extract", "-n", "96", "--resolution", "32", "--chunk", "8", "--shard", "16"]
TINY = ["-c", "4", "--ch", "8", "--batch-size", "8", "--log-every", "2", "--image-every", "0"]
PACK = ["pack", "train", "--name", "p", "--steps", "5", *TINY]


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``cache`` (the 96-image entry) and ``runs`` (pack run ``p`` trained on it)."""
    tmp = tmp_path_factory.mktemp("guarded")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, tmp)
        for args in (EXTRACT, PACK):
            code, out = _cli(*args, "--cache", str(tmp / "cache"), *_runs(args, tmp))
            assert code == 0, out
    return tmp


def _runs(args: list[str], tmp: Path) -> list[str]:
    return ["--runs", str(tmp / "runs")] if args[0] == "pack" else []


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A private copy of the module's cache and runs."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def _feature_dir(cache: Path, fid: str | None = None) -> Path:
    entry = DatasetEntry.open(str(cache), ENTRY)
    (only,) = [f for f in entry.feature_ids() if fid is None or f != fid]
    return cache / ENTRY / "features" / only


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (10, 20, 30):
        data[i] ^= 0xFF
    path.write_bytes(data)


def _refused(code: int, out: str, *words: str) -> None:
    assert code != 0, out
    assert "Traceback" not in out, out
    assert "Error:" in out and "Hint:" in out, out
    assert f"repackctl cache verify {ENTRY} --repair" in " ".join(out.split()), out
    for word in words:
        assert word in out, out


def _stats_files(runs: Path) -> list[Path]:
    return sorted((runs / "p" / "checkpoints").glob("step-*/latent_stats.json"))


def test_encode_refuses_missing_or_corrupt_tokens_chunk(work):
    cache, runs = work / "cache", work / "runs"
    chunk = _feature_dir(cache) / "tokens" / "c" / "2" / "0" / "0" / "0"  # rows 32–47
    kept = chunk.read_bytes()
    encode = ("pack", "encode", "--cache", str(cache), "--runs", str(runs), "--run", "p")
    chunk.unlink()
    _refused(*_cli(*encode), "tokens", "missing", ENTRY)
    chunk.write_bytes(kept)
    _flip_bytes(chunk)
    _refused(*_cli(*encode), "tokens", "corrupt", ENTRY)
    assert _stats_files(runs) == []  # no stats from zeros
    # the shards before the damaged one were kept; the damaged one is still to do
    (lat,) = DatasetEntry.open(str(cache), ENTRY).complete_groups("latents")
    done = DatasetEntry.open(str(cache), ENTRY).group["latents"][lat]["done"][:]
    assert (done[:32] == WRITTEN).all() and (done[32:48] == PENDING).all()


def test_extract_of_new_features_refuses_missing_or_corrupt_images_chunk(work):
    cache = work / "cache"
    first = _feature_dir(cache).name
    chunk = cache / ENTRY / "images" / "c" / "4" / "0" / "0" / "0"  # rows 64–79
    kept = chunk.read_bytes()
    layer1 = (*EXTRACT, "--cache", str(cache), "--layer", "1")
    chunk.unlink()
    _refused(*_cli(*layer1), "images", "missing")
    chunk.write_bytes(kept)
    _flip_bytes(chunk)
    _refused(*_cli(*layer1), "images", "corrupt")
    entry = DatasetEntry.open(str(cache), ENTRY)
    (new,) = [g for g in entry.group["features"].group_keys() if g != first]
    done = entry.group["features"][new]["done"][:]
    # nothing encoded from black pixels; the shards before the damaged one are kept
    assert (done[:64] == WRITTEN).all() and (done[64:] == PENDING).all()
    assert (entry.done[:] == WRITTEN).all()  # the images' own record is untouched


def test_extract_refuses_unsupported_builtin_resolution_before_creating_an_entry(work):
    cache = work / "cache"
    before = sorted(p.name for p in cache.iterdir())
    code, out = _cli("extract", "--cache", str(cache), "-n", "8", "--resolution", "512")
    assert code != 0 and "Traceback" not in out and "DataLoader" not in out, out
    assert "Error:" in out and "Hint:" in out and "32..256" in out, out
    assert sorted(p.name for p in cache.iterdir()) == before
    assert list_entries(str(cache), "all") == [ENTRY]


def test_encode_refuses_an_entry_of_the_same_name_holding_other_data(work):
    cache, runs, other, moved = (work / n for n in ("cache", "runs", "other", "moved"))
    code, out = _cli(*EXTRACT, "--cache", str(other), "--seed", "1")
    assert code == 0, out
    encode = ("pack", "encode", "--runs", str(runs), "--run", "p", "--cache")
    code, out = _cli(*encode, str(other))
    assert code != 0 and "Traceback" not in out and "Hint:" in out, out
    assert "seed 1 here, 0 there" in " ".join(out.split()), out
    assert _stats_files(runs) == [] and not DatasetEntry.open(str(other), ENTRY).latent_ids()
    # the same data in another folder is accepted: content is compared, not the path
    cache.rename(moved)
    code, out = _cli(*encode, str(moved))
    assert code == 0, out
    (stats_file,) = _stats_files(runs)
    written = stats_file.read_bytes()
    assert json.loads(written)["source"]["seed"] == 0
    # refused again, now from the stats the run recorded, and they are left as they were
    code, out = _cli(*encode, str(other))
    assert code != 0 and "latent_stats.json" in out and "Traceback" not in out, out
    assert stats_file.read_bytes() == written
    assert np.isfinite(json.loads(written)["mean"]).all()
