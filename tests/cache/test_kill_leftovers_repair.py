"""A `cache verify --repair` killed at any instant leaves a state that the extract ends.

The repair deleted the corrupt chunk, then marked its rows pending. Killed in between, the
rows read done with their chunk missing: the extract that the verify names printed "already
done", wrote nothing and exited 0. Now it marks the rows pending first and deletes last: killed
right before the deletion, the rows are pending, and the extract rewrites them whole.
"""

from __future__ import annotations

from pathlib import Path

from support.caches import patchpix_cache, patchpix_fixtures
from support.cli import cli_ok, cli_refused
from test_kill_leftovers_partials import ENTRY, killed

from repackctl.errors import CacheError

base_cache, cache = patchpix_fixtures("kill-repair", 16)


def test_a_repair_killed_before_it_deletes_the_chunk_is_ended_by_the_extract(
    cache: Path,
) -> None:
    chunk = sorted(p for p in (cache / ENTRY).rglob("tokens/c/*/*/*/0") if p.is_file())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupt: its checksum fails
    chunk.write_bytes(bytes(data))
    argv = ["cache", "verify", "--repair", "--cache", str(cache)]
    killed(cache.parent, argv, KILL_CALL="unlink", KILL_PAT=f"{chunk.relative_to(cache)}$")

    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(cache))
    assert "8 samples pending" in out, out
    patchpix_cache(cache, 16)  # the extract that wrote them (what verify names), resumed
    out = cli_ok("cache", "verify", "--cache", str(cache))
    assert f"✓ {ENTRY}: ok" in out, out
