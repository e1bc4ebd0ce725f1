"""The extract commands that `cache ls` / `cache verify` name, `cache rm` of a group that is not
there, and `extract --shard` for an existing entry.

- A relative ``--weights PATH`` was recorded and named as typed: the named command failed
  ("weights file not found") when run from another folder. The settings record the file's
  absolute path (new extracts; an older record is named as it was typed).
- Features written without a settings record whose weights the seed draws (``patchpix`` on an
  image folder) were named without ``--seed``: the command wrote another features group.
- `cache rm ENTRY --features BAD` hinted "run `repackctl extract` …": it lists the ids there are.
- `extract --shard S` (no multiple of ``--chunk``) was refused for an existing entry, which keeps
  its own layout and applies neither value: now a ``note:`` says so; a new entry is refused, and
  nothing is created.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures, random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries

ENTRY = "builtin-n16--train--32px"
CPU = ["--num-workers", "0", "--device", "cpu"]
PATCHPIX = ["--encoder", "patchpix", "--resolution", "32", *CPU]

base_cache, cache = patchpix_fixtures("s28b-extract")


def _named_extract(out: str) -> str:
    """The first `repackctl extract …` command that ``out`` names (in backticks)."""
    return re.findall(r"`(repackctl extract [^`]+)`", out)[0]


def _run_named(cmd: str, root: Path) -> str:
    return cli_ok(*shlex.split(cmd)[1:], "--cache", str(root), *CPU)


def test_relative_weights_are_named_by_a_path_that_works_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repackctl.encoders.builtin import builtin_encoder, save_weights

    root, mine, elsewhere = tmp_path / "cache", tmp_path / "mine", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    network = builtin_encoder(weights="random", seed=7, resolution=32).network
    save_weights(network, mine / "w.safetensors")
    monkeypatch.chdir(mine)
    src = ["--resolution", "32", "-n", "8", "--weights", "w.safetensors"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "8", *CPU, "--cache", str(root))
    entry = DatasetEntry.open(str(root), "builtin-n8--train--32px")
    (fid,) = entry.feature_ids()
    tokens = root / entry.name / "features" / fid / "tokens" / "c"
    shard = sorted(p for p in tokens.rglob("*") if p.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[2] ^= 0xFF  # rows 0–7 fail their checksum: `--repair` marks them to do again
    shard.write_bytes(data)
    cmd = _named_extract(cli_ok("cache", "verify", "--repair", "--cache", str(root)))
    assert f"--weights {mine / 'w.safetensors'} " in cmd, cmd
    monkeypatch.chdir(elsewhere)  # the command as named, from another folder
    done = _run_named(cmd, root)
    assert "written now │ 8" in done and f"features │ {fid}" in done, done
    assert DatasetEntry.open(str(root), entry.name).feature_ids() == [fid]
    cli_ok("cache", "verify", "--cache", str(root))


def test_seed_drawn_plugin_weights_are_named_with_their_seed(tmp_path: Path) -> None:
    """``run_extract`` without the CLI's settings record (the demo's pipeline): patchpix weights
    drawn from ``--seed 3`` on an image folder (whose entry records no seed)."""
    from repackctl.cache.commands import features_extract_command
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    root, images = tmp_path / "cache", random_image_folder(tmp_path / "images")
    flags = {"cache": str(root), "num_workers": 0, "seed": 3, "extract.encoder": "patchpix"}
    flags |= {"extract.data": f"imagefolder:{images}", "extract.resolution": 32}
    made = run_extract(resolve_settings(None, flags, environ={}).settings)
    entry = DatasetEntry.open(str(root), made.entry)
    cmd = features_extract_command(entry, made.features)
    assert cmd.endswith("--seed 3"), cmd
    out = _run_named(cmd, root)  # the same features: nothing to write, no second group
    assert "already done │ 6" in out and f"features │ {made.features}" in out, out
    assert DatasetEntry.open(str(root), made.entry).feature_ids() == [made.features]


def test_rm_of_a_group_that_is_not_there_lists_the_ids_there_are(cache: Path) -> None:
    (fid,) = DatasetEntry.open(str(cache), ENTRY).feature_ids()
    for kind, what in (("features", f"have: {fid}"), ("latents", "have: none")):
        out = cli_refused(
            6, "cache", "rm", ENTRY, f"--{kind}", "BAD", "--yes", "--cache", str(cache)
        )
        assert f"'BAD' in {ENTRY} ({what})" in out, out
        assert f"`repackctl cache info {ENTRY}`" in out and "repackctl extract" not in out, out
        assert "pack encode" not in out, out
    assert DatasetEntry.open(str(cache), ENTRY).feature_ids() == [fid]  # nothing removed


def test_shard_for_an_existing_entry_is_noted_not_refused(cache: Path, tmp_path: Path) -> None:
    roots = ["--cache", str(cache)]
    out = cli_ok("extract", *PATCHPIX, "-n", "16", "--shard", "12", *roots)  # chunk 8, shard 8
    assert "already done │ 16" in out, out
    assert f"note: cache entry {ENTRY} exists and keeps its layout (chunk 8, shard 8)" in out, out
    assert "--shard 12 not applied" in out, out
    out = cli_refused(6, "extract", *PATCHPIX, "-n", "8", "--shard", "12", *roots)  # a new entry
    assert "shard size 12 is not a multiple of chunk size 32" in out, out
    assert list_entries(str(cache), "all") == [ENTRY]
    fresh = tmp_path / "fresh"
    cli_refused(6, "extract", *PATCHPIX, "-n", "8", "--shard", "12", "--cache", str(fresh))
    assert not fresh.exists()  # refused before the cache is made
