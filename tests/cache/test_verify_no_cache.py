"""`cache verify` where there is no cache (a mistyped `--cache`, an unset `REPACKCTL_CACHE`)
is an error naming the root, not a silent exit 0 that a script takes for a verified cache; a
cache without entries says that nothing was checked."""

from __future__ import annotations

from support.caches import patchpix_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CacheError


def test_verify_of_a_root_without_a_cache_is_refused(tmp_path):
    typo = tmp_path / "cahce"
    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(typo))
    assert f"no cache at {typo}: nothing was verified" in out, out
    assert "--cache" in out.split("Hint:")[1]
    assert not typo.exists()  # nothing made there
    for repair in ([], ["--repair"]):
        cli_refused(CacheError.exit_code, "cache", "verify", *repair, "--cache", str(typo))


def test_verify_of_an_empty_cache_says_nothing_was_checked(tmp_path):
    cache = patchpix_cache(tmp_path / "cache", 8)
    (name,) = [p.name for p in cache.iterdir() if p.is_dir()]
    assert f"{name}: ok" in cli_ok("cache", "verify", "--cache", str(cache))
    cli_ok("cache", "rm", name, "--yes", "--cache", str(cache))
    out = cli_ok("cache", "verify", "--cache", str(cache))
    assert f"no cache entries in {cache}: nothing to verify" in out, out
