"""Statistics files and sample batches are read and written safely.

1. A damaged file in the tool's own cache of reference statistics (a flipped byte, a truncated
   file) is recomputed with a ``Warning:`` naming it, and the score equals that of the undamaged
   cache (it was a ``BadZipFile`` traceback on every rerun).
2. A damaged stats file the user names with ``--ref`` (flipped, truncated, or its arrays edited
   behind the checksum written with them) is one ``Error:`` naming it with a ``Hint:``; nothing
   is written and the file is left as it was. Files written before the checksum still load.
3. A flipped byte in an images ``.npz`` is an ``Error:`` naming the file, not a traceback.
4. A kill while a statistics file is written leaves a temporary that the rerun removes, and only
   that one: another target's temporary and a live writer's stay.

Everything is real: PNG folders and .npz files in tmp_path, the built-in encoder's FD through
Typer's CliRunner, and a real `repackctl` subprocess SIGKILLed at the crash-test kill point.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.errors import DataError
from repackctl.evaluate.generative import read_stats_bundle, write_stats_bundle
from repackctl.metrics.adm import iter_npz_images, write_samples_npz
from repackctl.metrics.frechet import (
    CHECKSUM_KEY,
    KILL_AT_WRITTEN,
    KILL_ENV,
    FeatureStats,
    load_stats,
)
from repackctl.temp_names import HOST

FD = ["--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu", *FD_WEIGHTS]
STATS = ["--extractor", "fd", "--resolution", "32", "--device", "cpu", *FD_WEIGHTS]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _builtin_images(n: int, split: str) -> np.ndarray:
    from repackctl.data.builtin import BuiltinSource

    src = BuiltinSource(split=split, num=n, seed=1)
    return np.stack([src.load(i, 32) for i in range(n)])  # (N, 32, 32, 3) uint8


def _pngs(folder: Path, n: int, split: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(_builtin_images(n, split)):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return folder


def _flip(path: Path, offset: int | None = None) -> None:
    """Invert one byte (default: the middle one), as a disk or a copy might."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 5])


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "metadata"}


def _fd(out: Path) -> float:
    return json.loads(out.read_text())["metrics"]["fd"]


@pytest.fixture
def scored(tmp_path) -> tuple[Path, Path, Path, float]:
    """(samples folder, reference folder, the cached stats file, the FD scored against it)."""
    samples, ref = _pngs(tmp_path / "s", 10, "train"), _pngs(tmp_path / "ref", 12, "val")
    sdir = tmp_path / "stats"
    first = tmp_path / "first.json"
    cli_ok("evaluate", "fid", str(samples), "--ref", str(ref), "--stats-dir", str(sdir),
           "--out", str(first), *FD)  # fmt: skip
    (cached,) = sdir.glob("*.npz")
    return samples, ref, cached, _fd(first)


# --------------------------------------------------------------------------- 1. the tool's cache
@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_cached_stats_file_is_recomputed_with_a_warning(tmp_path, scored, damage):
    samples, ref, cached, fd = scored
    before = _arrays(cached)
    damage(cached)
    again = tmp_path / "again.json"
    out = cli_ok("evaluate", "fid", str(samples), "--ref", str(ref), "--stats-dir",
                 str(cached.parent), "--out", str(again), *FD)  # fmt: skip
    assert "Warning:" in out and cached.name in out and "recomputing" in out, out
    assert _fd(again) == fd  # the same result as with the undamaged cache
    after = _arrays(cached)  # replaced in place by the same statistics, readable again
    assert sorted(after) == sorted(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no temporary left
    out = cli_ok("evaluate", "fid", str(samples), "--ref", str(ref), "--stats-dir",
                 str(cached.parent), "--out", str(tmp_path / "third.json"), *FD)  # fmt: skip
    assert "Warning:" not in out and "reused" in out  # the rerun is clean


# --------------------------------------------------------------------------- 2. a file the user names
def _edit_behind_checksum(path: Path) -> None:
    """Change one float of mu and re-save every member as it was (the zip CRCs are new)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mu"] = arrays["mu"].copy()
    arrays["mu"][3] += 1e-3
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage", [_flip, _truncate, _edit_behind_checksum], ids=["flipped", "truncated", "edited"]
)
def test_a_damaged_stats_file_given_with_ref_is_refused(tmp_path, damage):
    samples, ref = _pngs(tmp_path / "s", 10, "train"), _pngs(tmp_path / "ref", 12, "val")
    sdir = tmp_path / "stats"
    cli_ok("evaluate", "stats", str(ref), *STATS, "--stats-dir", str(sdir))
    (made,) = sdir.glob("*.npz")
    damage(made)
    damaged = made.read_bytes()
    target = tmp_path / "m.json"
    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(samples), "--ref", str(made),
                      "--out", str(target), *FD)  # fmt: skip
    assert made.name in out and "repackctl evaluate stats" in out, out
    assert not target.exists()  # nothing written before the refusal
    assert made.read_bytes() == damaged  # the user's file is neither deleted nor rewritten


def test_stats_files_carry_a_checksum_and_older_files_still_load(tmp_path):
    rng = np.random.default_rng(0)
    main = FeatureStats().update(rng.normal(size=(20, 4)))
    spatial = FeatureStats().update(rng.normal(size=(20, 3)))
    path = write_stats_bundle(tmp_path / "b.npz", main, {"kind": "inception", "n": 20}, spatial)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"mu", "sigma", "n", "metadata", "mu_s", "sigma_s"}
        assert len(json.loads(str(z["metadata"]))[CHECKSUM_KEY]) == 64
    bundle = read_stats_bundle(path)
    assert CHECKSUM_KEY not in bundle["fid"].metadata  # the metadata reads as it was given
    np.testing.assert_array_equal(bundle["sfid"].sigma, spatial.sigma)
    # the checksum covers the sFID arrays too
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["sigma_s"] = arrays["sigma_s"] * 1.0001
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(DataError, match="checksum"):
        read_stats_bundle(tmp_path / "edited.npz")
    # a file of the older format (no checksum) is read as before
    old_meta = {"extractor": "x", "weights_sha256": "w", "resolution": 32, "source_sha256": "s"}
    np.savez(tmp_path / "old.npz", mu=main.mu, sigma=main.sigma, n=np.int64(main.n),
             metadata=np.array(json.dumps(old_meta, sort_keys=True)))  # fmt: skip
    old = load_stats(tmp_path / "old.npz")
    assert old.n == 20 and old.metadata == old_meta
    np.testing.assert_array_equal(old.mu, main.mu)


# --------------------------------------------------------------------------- 3. images .npz
def test_a_flipped_images_npz_is_an_error_naming_it(tmp_path):
    npz = write_samples_npz(tmp_path / "gen.npz", _builtin_images(16, "train"))
    _flip(npz)  # inside arr_0's data: only the zip's CRC-32 notices
    with pytest.raises(DataError, match="gen.npz is not a readable .npz file"):
        list(iter_npz_images(npz, batch_size=4))
    ref = _pngs(tmp_path / "ref", 12, "val")
    target = tmp_path / "m.json"
    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(npz), "--ref", str(ref),
                      "--stats-dir", str(tmp_path / "stats"), "--out", str(target), *FD)  # fmt: skip
    assert "gen.npz" in out and "Bad CRC-32" in out, out
    assert not target.exists()


# --------------------------------------------------------------------------- 4. kill while writing
@pytest.mark.slow
def test_a_kill_while_stats_are_written_leaves_nothing_after_the_rerun(tmp_path):
    sdir = tmp_path / "stats"
    args = ["evaluate", "stats", "builtin", "--num", "24", *STATS, "--stats-dir", str(sdir)]
    env = subprocess_env(tmp_path, **{KILL_ENV: KILL_AT_WRITTEN})
    proc = subprocess.Popen([sys.executable, "-m", "repackctl", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    (left,) = list(sdir.iterdir())  # the killed writer's temporary, nothing else
    target, rest = left.name[1:].split(".npz.")
    target += ".npz"
    assert left.name.endswith(".tmp") and rest.split(".")[0] == f"{proc.pid}-{HOST}"
    # what the rerun must not touch: another target's temporary of the same dead writer, the
    # temporary of this target by a writer that is still running, and a user's file
    other = sdir / f".other.npz.{proc.pid}.0123abcd.tmp"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        live = sdir / f".{target}.{writer.pid}.89abcdef.tmp"
        mine = sdir / "notes.txt"
        for p in (other, live, mine):
            p.write_text("keep")
        out = cli_ok(*args)
    finally:
        writer.kill()
        writer.wait()
    assert "computed" in out
    assert sorted(p.name for p in sdir.iterdir()) == sorted(
        [target, other.name, live.name, mine.name]
    )
    assert read_stats_bundle(sdir / target)["fd"].n == 24
