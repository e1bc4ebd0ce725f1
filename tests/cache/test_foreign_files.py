"""The cache never deletes or takes over what it did not write; bad cache paths and entry names
are a clean `Error:` + `Hint:` (real caches made by `repackctl extract`, 8 images at 32 px)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app

runner = CliRunner()
ENTRY = "builtin-n8--train--32px"
EXTRACT = ["extract", "-n", "8", "--resolution", "32"]


def _run(*args: str):
    return runner.invoke(app, list(args))


def _refused(res, *words: str) -> str:
    """A one-line `Error:` with a `Hint:`, exit 6 (cache error), no traceback, naming ``words``."""
    assert res.exit_code == 6, res.output
    assert res.output.count("Error:") == 1 and "Hint:" in res.output, res.output
    assert "Traceback" not in res.output and "Warning" not in res.output, res.output
    for w in words:
        assert w in res.output, (w, res.output)
    return res.output


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (what a refused command must leave as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _extract(cache: Path) -> Path:
    res = _run(*EXTRACT, "--cache", str(cache))
    assert res.exit_code == 0, res.output
    return cache / ENTRY


def test_foreign_files_are_never_taken_over_or_removed(tmp_path):
    cache = tmp_path / "cache"
    # (a) a folder with the entry's name that is no zarr group: extract refuses, writes nothing
    (cache / ENTRY / "images").mkdir(parents=True)
    (cache / ENTRY / "notes.txt").write_text("mine")
    (cache / ENTRY / "images" / "x.txt").write_text("mine too")
    before = _files(cache / ENTRY)
    _refused(_run(*EXTRACT, "--cache", str(cache)), "no zarr.json", "another --cache")
    assert _files(cache / ENTRY) == before
    (cache / ENTRY).rename(tmp_path / "moved")

    # (b) foreign files inside a real entry: every form of `cache rm` refuses, deletes nothing
    entry = _extract(cache)
    feats = DatasetEntry.open(str(cache), ENTRY).feature_ids()[0]
    DatasetEntry.open(str(cache), ENTRY).create_or_open_group("latents", "lat1", {"k": 1})
    strays = [
        entry / "features" / feats / "tokens" / "c" / "0" / "stray",
        entry / "latents" / "lat1" / "done" / "c" / "keep.txt",
        entry / "notes.txt",
    ]
    for p in strays:
        p.parent.mkdir(exist_ok=True)  # latents/lat1/done has no chunk written yet
        p.write_text("not the cache's")
    before = _files(cache)
    # the first foreign path of a sorted walk is named: the entry's is the one under features/
    forms = [["--features", feats], ["--latents", "lat1"], []]
    for stray, form in zip(strays[:2] + strays[:1], forms, strict=True):
        _refused(_run("cache", "rm", ENTRY, *form, "--cache", str(cache), "--yes"), str(stray))
        assert _files(cache) == before
    # a real process: zarr's warning about the foreign file is not printed either
    res = subprocess.run(
        [sys.executable, "-m", "repackctl", "cache", "rm", ENTRY, "--yes"],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 6 and "Warning" not in res.stderr, res.stderr
    assert res.stderr.startswith("Error:") and str(strays[0]) in res.stderr, res.stderr
    assert _files(cache) == before

    # once moved out, the cache's own files (chunks, shard locks, zarr.json) are all removed
    for p in strays:
        p.unlink()
    assert _run("cache", "rm", ENTRY, "--features", feats, "--yes").exit_code == 0
    assert feats not in DatasetEntry.open(str(cache), ENTRY).feature_ids()
    assert _run("cache", "rm", ENTRY, "--yes").exit_code == 0
    assert not entry.exists() and list_entries(str(cache), "all") == []
    assert _files(tmp_path / "moved") == {"notes.txt": b"mine", "images/x.txt": b"mine too"}


def test_a_file_as_cache_is_a_clean_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a file")
    commands = [
        EXTRACT,
        ["cache", "ls"],
        ["cache", "info", ENTRY],
        ["cache", "verify"],
        ["cache", "rm", ENTRY, "--yes"],
    ]
    for args in commands:
        _refused(_run(*args, "--cache", str(afile)), f"{afile} is a file", "--cache")
    _refused(_run(*EXTRACT, "--cache", str(afile / "sub")), "which is a file")
    assert afile.read_text() == "a file"


def test_names_that_are_not_entries_are_not_found(tmp_path):
    cache = tmp_path / "cache"
    entry = _extract(cache)
    before = _files(tmp_path)
    for name in ("../cache", ".", "../", "a/b", ".."):
        for args in (["info", name], ["rm", name, "--yes"], ["verify", name]):
            out = _refused(_run("cache", *args, "--cache", str(cache)), "no entry named")
            assert "repackctl cache ls" in out and "incomplete" not in out, out
    assert _files(tmp_path) == before and entry.is_dir()
    assert list_entries(str(cache)) == [ENTRY]


def test_an_empty_or_second_group_option_never_removes_the_entry(tmp_path):
    """`cache rm ENTRY --features ""` (a script's unset `$ID`) removed the whole entry: images,
    features and latents; of two group options only the first was removed. Both are refused
    before anything is removed."""
    cache = tmp_path / "cache"
    folder = _extract(cache)
    fid = DatasetEntry.open(str(cache), ENTRY).feature_ids()[0]
    before = _files(folder)
    for flags in (["--features", ""], ["--latents", " "], ["--text", ""], ["--triplets", ""],
                  ["--features", fid, "--latents", "x"]):  # fmt: skip
        res = _run("cache", "rm", ENTRY, *flags, "--yes", "--cache", str(cache))
        assert res.exit_code != 0 and "Traceback" not in res.output, (flags, res.output)
        assert "Error:" in res.output and "Hint:" in res.output and "cache info" in res.output
        assert _files(folder) == before, flags
    assert ENTRY in list_entries(str(cache))
