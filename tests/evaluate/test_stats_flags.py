"""`evaluate stats` refuses a ``--seed`` flag where it draws nothing, and a ``--num`` above what
its source holds (both were ignored without a word).

1. The seed picks the images of ``builtin``, a ``--num`` subset of an image folder and the FD
   encoder of ``--fd-weights random``. Of a whole folder, an .npz (its first N) or a cache entry
   (a class-balanced round robin) it picked nothing: ``--seed 7`` reused the file of seed 0.
2. ``--num 50`` of a folder, an .npz or a cache entry of 12 or 16 images summarised all of them
   (the table said 12 images) instead of 50.

Real components: PNG folders and an .npz in tmp_path, a Zarr cache made by `extract`, the
built-in encoder's FD statistics on the CPU, through Typer's CliRunner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.caches import patchpix_cache, random_image_folder
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.cache.store import list_entries
from repackctl.errors import ConfigError
from repackctl.evaluate.generative import read_stats_bundle

STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture
def sources(tmp_path) -> dict[str, list[str]]:
    """An image folder of 6 images, an .npz of 12 and a cache entry of 16: ``evaluate stats``
    arguments for each."""
    folder = random_image_folder(tmp_path / "folder")  # 2 classes × 3
    images = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(images, arr_0=rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    cache = patchpix_cache(tmp_path / "cache", 16)
    (entry,) = list_entries(str(cache))
    return {
        "folder": [str(folder)],
        "npz": [str(images)],
        "cache": ["--cache", str(cache), "--ref-cache", entry],
    }


def _n_files(folder: Path) -> int:
    return len(list(folder.glob("*.npz"))) if folder.exists() else 0


@pytest.mark.parametrize(
    "kind,num,how",
    [
        ("folder", [], "all its 6 images"),
        ("npz", [], "all its 12 images"),
        ("npz", ["--num", "4"], "its first 4 images"),
        ("cache", ["--num", "4"], "a class-balanced round robin of 4 images"),
    ],
)
def test_a_seed_flag_that_draws_nothing_is_refused(sources, tmp_path, kind, num, how):
    sdir = tmp_path / "stats"
    args = [*STATS, *sources[kind], *num, "--stats-dir", str(sdir)]
    out = cli_refused(ConfigError.exit_code, *args, "--seed", "7")
    assert "--seed 7 is given" in out and f"draw nothing at random ({how})" in out, out
    assert "drop --seed" in out
    assert _n_files(sdir) == 0  # refused before anything was computed
    cli_ok(*args)  # the same request without the flag is made as before


def test_a_seed_that_draws_is_taken_and_one_from_the_environment_is_not_refused(
    sources, tmp_path, monkeypatch
):
    sdir = tmp_path / "stats"
    subset = [*STATS, *sources["folder"], "--num", "3", "--stats-dir", str(sdir)]
    made = set()
    for seed in ("1", "2"):  # a --num subset of a folder: each seed draws other images
        cli_ok(*subset, "--seed", seed)
        made.add(next(iter(read_stats_bundle(_newest(sdir)).values())).metadata["source_sha256"])
    assert len(made) == 2
    cli_ok(*STATS, "builtin", "--num", "3", "--seed", "5", "--stats-dir", str(sdir))
    monkeypatch.setenv("REPACKCTL_SEED", "7")  # every command's seed, not this command's flag
    cli_ok(*STATS, *sources["npz"], "--stats-dir", str(sdir))


def _newest(folder: Path) -> Path:
    return max(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.parametrize("kind,held", [("folder", 6), ("npz", 12), ("cache", 16)])
def test_a_num_above_what_the_source_holds_is_refused(sources, tmp_path, kind, held):
    sdir = tmp_path / "stats"
    args = [*STATS, *sources[kind], "--stats-dir", str(sdir)]
    out = cli_refused(ConfigError.exit_code, *args, "--num", "50")
    assert "--num 50 asks for 50 images of " in out and f"it holds {held} images" in out, out
    assert f"pass --num {held} or fewer (or leave --num out for all {held})" in out, out
    assert _n_files(sdir) == 0
    cli_ok(*args, "--num", str(held))  # all of them, asked for
    (made,) = sdir.glob("*.npz")
    assert read_stats_bundle(made)["fd"].n == held
