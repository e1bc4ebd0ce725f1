"""`cache rm` of an entry that is a link (to a folder elsewhere) refuses before it moves
anything: the cache does not follow links. It used to move the link into ``.removing/`` and
crash there (``Cannot call rmtree on a symbolic link``), after which `cache rm` and `extract`
of that entry refused for good; such a stuck link is now named with the way out. Real caches
made by `repackctl extract` (8 images at 32 px)."""

from __future__ import annotations

from pathlib import Path

from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

ENTRY = "builtin-n8--train--32px"
EXTRACT = ["extract", "-n", "8", "--resolution", "32"]


def _linked_entry(tmp_path: Path) -> tuple[Path, Path]:
    """(cache, target): a cache whose entry ``ENTRY`` is a link to ``target``, a real entry
    folder outside it (the user moved it to another disk and linked it back)."""
    cache = tmp_path / "cache"
    cli_ok(*EXTRACT, "--cache", str(cache))
    target = tmp_path / "elsewhere" / ENTRY
    target.parent.mkdir()
    (cache / ENTRY).rename(target)
    (cache / ENTRY).symlink_to(target)
    return cache, target


def test_cache_rm_refuses_an_entry_that_is_a_link_and_moves_nothing(tmp_path):
    cache, target = _linked_entry(tmp_path)
    before = snapshot(tmp_path)
    for more in ([], ["--yes"]):  # refused before it asks, and with --yes
        out = cli_refused(6, "cache", "rm", ENTRY, *more, "--cache", str(cache))
        assert "is a link to" in out and "does not follow" in out, out
        assert "nothing was removed" in out and "remove the link yourself" in out, out
        assert snapshot(tmp_path) == before  # no .removing/, the link and its target as they were


def test_a_link_an_older_cache_rm_left_in_removing_is_named_with_the_way_out(tmp_path):
    cache, target = _linked_entry(tmp_path)
    (cache / ".removing").mkdir()
    stuck = cache / ".removing" / ENTRY
    (cache / ENTRY).rename(stuck)  # where the old `cache rm` left it when rmtree refused
    before = snapshot(tmp_path)
    for args in (["cache", "rm", ENTRY, "--yes"], EXTRACT):
        out = cli_refused(6, *args, "--cache", str(cache))
        assert "is a link to" in out and "an older `cache rm` moved there" in out, out
        assert "rm " in out and "mv " in out and "nothing was removed" in out, out
        assert snapshot(tmp_path) == before
    stuck.rename(cache / ENTRY)  # moved back, as the hint says: a link `cache rm` refuses
    cli_refused(6, "cache", "rm", ENTRY, "--yes", "--cache", str(cache))
    (cache / ENTRY).unlink()  # removed, as the hint says: the entry is made anew
    cli_ok(*EXTRACT, "--cache", str(cache))
    assert (cache / ENTRY).is_dir() and not (cache / ENTRY).is_symlink()
    assert (target / "zarr.json").is_file()  # the linked folder was never touched
