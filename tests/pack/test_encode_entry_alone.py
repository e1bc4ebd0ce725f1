"""`pack encode --entry E` beside `--split` / `--data` / `-n` / `--resolution`.

The entry is the one encoded, and the others were dropped without a word: `--entry E --split
val` encoded E whatever its split. Now they are refused (as `evaluate recon` / `probe` refuse
`--split` beside `--entry`), before anything is written; a lower layer's value (a config
file's split under an `--entry` flag) is overridden as any setting is.
"""

from __future__ import annotations

from pathlib import Path

from support.caches import cli_pack_stack
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

TRAIN, VAL = "builtin-n16--train--32px", "builtin-n3--val--32px"


def test_source_flags_beside_entry_are_refused(tmp_path: Path) -> None:
    cache, runs = cli_pack_stack(tmp_path)
    encode = ["pack", "encode", "--run", "pk", "--entry", TRAIN, "--device", "cpu", *cache, *runs]
    out = cli_refused(2, *encode, "--split", "val")
    assert "pack.split = 'val' (from flag) given with pack.entry" in out, out
    assert "drop --split" in out and "drop --entry" in out, out
    out = cli_refused(2, *encode, "-n", "3", "--resolution", "32")
    assert "pack.num = 3 (from flag), pack.resolution = 32 (from flag)" in out, out
    assert "latents" not in DatasetEntry.open(str(tmp_path / "cache"), TRAIN).group
    config = tmp_path / "split.toml"
    config.write_text('[pack]\nsplit = "val"\n')
    assert TRAIN in cli_ok(*encode, "--config", str(config))  # the flag overrides the file
    assert "latents" not in DatasetEntry.open(str(tmp_path / "cache"), VAL).group
