"""A `pack encode` killed after its last row, before its channel stats, is unfinished.

Killed right before the latents group's ``zarr.json`` got ``stats``, every row read done and
`cache verify` said ok, `cache ls` listed the group as finished (verify assumed a live encoder
was writing the stats); only `train dit` refused it. Now both name it unfinished, with the pack
encode command, which, followed, writes the stats; while a writer holds the entry, verify does
not read it (that writer may be writing them).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from test_kill_leftovers_partials import killed

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError

ENTRY = "builtin-n32--train--32px"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_stats_not_written_are_named_and_the_named_command_writes_them(
    tmp_path: Path, tmp_path_factory
) -> None:
    root = shared_packed_cache(tmp_path_factory, tmp_path / "cache", 32)
    common = ["--cache", str(root), "--runs", str(tmp_path / "runs")]
    (lid,) = DatasetEntry.open(str(root), ENTRY).latent_ids()
    cli_ok("cache", "rm", ENTRY, "--latents", lid, "--yes", "--cache", str(root))
    meta = rf"/latents/{re.escape(lid)}/zarr\.[0-9a-f]{{32}}\.partial$"
    argv = ["pack", "encode", "--run", "pk", "--device", "cpu", *common]
    killed(tmp_path, argv, KILL_CALL="replace", KILL_PAT=meta, KILL_HAS='"stats"')
    (left,) = root.rglob("zarr.*.partial")  # the killed write's, made older: swept below
    os.utime(left, (time.time() - 60, time.time() - 60))

    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(root))
    assert f"latents/{lid}: unfinished: every row is written, its channel stats are not" in out
    again = re.search(r"`(repackctl pack encode --run [^`]+)` writes them", out)
    assert again is not None and f"--entry {ENTRY}" in again.group(1), out
    listed = cli_ok("cache", "ls", "--cache", str(root))
    assert "(unfinished: stats not written)" in listed, listed
    assert f"all 32 rows written, its channel stats not; finish with `{again.group(1)}`" in listed

    cli_ok(*again.group(1).split()[1:], "--device", "cpu", *common)
    assert DatasetEntry.open(str(root), ENTRY).latents(lid).attrs.get("stats")
    assert list(root.rglob("*.partial")) == []
    out = cli_ok("cache", "verify", "--cache", str(root))
    assert f"✓ {ENTRY}: ok" in out, out
