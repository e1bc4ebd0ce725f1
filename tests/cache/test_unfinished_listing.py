"""`cache ls` and `cache info` show groups with pending rows as unfinished, with the command
that finishes each.

A features or latents group whose extract or `pack encode` was killed (or whose rows `cache
verify --repair` marked pending) was listed by its id alone, like a finished group: `cache ls`
gave no sign, `cache info` only a lower written count. Now both say "unfinished: N of M rows
pending" (and `--json` lists them), and name the command that finishes each group; running
those commands, as printed, leaves nothing unfinished.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok

ENTRY = "builtin-n32--train--32px"
FID = "patchpix--final--32px--c1fa138fdb"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("s28-unfinished") / "cache"
    return shared_packed_cache(tmp_path_factory, cache, 32)  # 2 shards


def _drop_second_shard(array: Path) -> None:
    """Delete the file of the array's second shard (rows 16–31), as a lost write leaves it."""
    chunks = array / "c"
    (shard,) = [
        p for p in chunks.rglob("*") if p.is_file() and p.relative_to(chunks).parts[0] == "1"
    ]
    shard.unlink()


def test_pending_groups_are_listed_as_unfinished_with_their_command(
    base: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(base, cache)
    shutil.copytree(base.parent / "runs", tmp_path / "runs")
    roots = ["--cache", str(cache)]
    group = cache / ENTRY
    (lid,) = [p.name for p in (group / "latents").iterdir() if p.is_dir()]
    assert "unfinished" not in cli_ok("cache", "ls", *roots)  # all finished

    _drop_second_shard(group / "features" / FID / "tokens")
    _drop_second_shard(group / "latents" / lid / "mean")
    cli_ok("cache", "verify", ENTRY, "--repair", *roots)  # those rows are pending now

    listed = cli_ok("cache", "ls", *roots)
    assert f"{FID} (unfinished: 16 of 32 rows pending)" in listed, listed
    assert f"{lid} (unfinished: 16 of 32 rows pending)" in listed, listed
    info = cli_ok("cache", "info", ENTRY, *roots)
    assert info.count("unfinished: 16 of 32 rows pending, finish with `") == 2, info
    data = json.loads(cli_ok("cache", "ls", *roots, "--json"))
    (shown,) = data["entries"]
    assert [(g["group"], g["pending"], g["n"]) for g in shown["unfinished"]] == [
        (f"features/{FID}", 16, 32),
        (f"latents/{lid}", 16, 32),
    ]

    # the commands, as the listing names them, in its order, finish both groups
    extract, encode = (g["finish"].strip("`") for g in shown["unfinished"])
    assert "--precision fp32" in extract and "-n 32" in extract, extract
    assert f"--entry {ENTRY}" in encode, encode
    more = ["--num-workers", "0", "--device", "cpu", *roots]
    assert "written now │ 16" in cli_ok(*shlex.split(extract)[1:], *more)
    encode_args = [*shlex.split(encode)[1:], "--device", "cpu", *roots]
    assert "written now │ 16" in cli_ok(*encode_args, "--runs", str(tmp_path / "runs"))
    assert "unfinished" not in cli_ok("cache", "ls", *roots)
    assert "unfinished" not in cli_ok("cache", "info", ENTRY, *roots)
