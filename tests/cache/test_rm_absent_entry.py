"""`cache rm` of an entry that is not in the cache says so, with the entries that are (the
close names first), and nothing is removed. It ended with the readers' hint, "run `repackctl
extract` for it": a user removing something was told to create it (audit C, item 9).

A real patchpix cache (16 built-in images at 32 px).
"""

from __future__ import annotations

from pathlib import Path

from support.caches import patchpix_fixtures
from support.cli import cli_refused
from support.snapshot import snapshot

from repackctl.cache.store import list_entries
from repackctl.errors import CacheError

base_cache, cache = patchpix_fixtures("rm-absent")


def test_removing_an_absent_entry_names_the_entries_there_and_no_extract(cache: Path):
    (name,) = list_entries(str(cache))  # builtin-n16--train--32px
    before = snapshot(cache)
    for absent, group in (("builtin", []), ("builtin-n16--val--32px", ["--features", "x"])):
        out = cli_refused(CacheError.exit_code, "cache", "rm", absent, *group, "--yes")
        assert f"no cache entry '{absent}' in {cache}: nothing removed (have: {name})" in out, out
        assert f"did you mean {name}?" in out and "`repackctl cache ls`" in out, out
        assert "extract" not in out, out
    out = cli_refused(CacheError.exit_code, "cache", "rm", "zzz", "--yes")  # nothing close
    assert f"(have: {name})" in out and "did you mean" not in out and "extract" not in out, out
    assert snapshot(cache) == before
