"""`evaluate stats SOURCE --cache C --stats-dir D` refuses the ``--cache`` flag: it decided
nothing (the images are not read from a cache and the statistics go to D), so a user who
meant the statistics of C's images, or a file beside C, got neither without a word.

Real components: the built-in images, the built-in encoder's FD statistics on the CPU, through
Typer's CliRunner.
"""

from __future__ import annotations

import pytest
from support.caches import patchpix_cache
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.cache.store import list_entries
from repackctl.errors import ConfigError

STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def test_a_cache_flag_with_a_stats_dir_and_a_source_is_refused(tmp_path, monkeypatch):
    sdir, other = tmp_path / "stats", tmp_path / "other-cache"
    args = [*STATS, "builtin", "--num", "3", "--stats-dir", str(sdir)]
    out = cli_refused(ConfigError.exit_code, *args, "--cache", str(other))
    assert f"--cache {other} is given, but SOURCE 'builtin' is not read from a cache" in out, out
    assert f"--stats-dir {sdir}: it would be ignored" in out and "drop --cache" in out
    assert not sdir.exists() and not (tmp_path / "other-cache-reference-stats").exists()
    # without --stats-dir the flag decides where the statistics go: taken
    cli_ok(*STATS, "builtin", "--num", "3", "--cache", str(other))
    assert len(list((tmp_path / "other-cache-reference-stats").glob("*.npz"))) == 1
    # a cache from the environment is every command's: not refused
    monkeypatch.setenv("REPACKCTL_CACHE", str(other))
    cli_ok(*args)
    assert len(list(sdir.glob("*.npz"))) == 1


def test_a_cache_flag_that_holds_the_ref_cache_entry_is_taken(tmp_path):
    cache = patchpix_cache(tmp_path / "cache", 8)
    (entry,) = list_entries(str(cache))
    sdir = tmp_path / "stats"
    cli_ok(*STATS, "--cache", str(cache), "--ref-cache", entry, "--stats-dir", str(sdir))
    assert len(list(sdir.glob("*.npz"))) == 1
