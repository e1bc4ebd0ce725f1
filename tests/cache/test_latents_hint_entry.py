"""The command `cache verify --repair` names for packed latents of a held-out entry.

It was `repackctl pack encode --run RUN`: run as printed, that encodes the run's training entry
with the run's newest checkpoint, so the held-out entry's pending rows stayed pending (and a
newer checkpoint would have written another group). Now it names the pack checkpoint the
latents record and the entry they are in, and running it as printed finishes them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from support.caches import cli_pack_stack
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry

VAL = "builtin-n3--val--32px"


def test_the_repair_hint_finishes_the_latents_of_a_held_out_entry(tmp_path: Path) -> None:
    cache, runs = cli_pack_stack(tmp_path, pack=("--steps", "2", "--ckpt-every", "1"))
    encode = ["pack", "encode", "--run", "pk/checkpoints/step-0000001", "--entry", VAL]
    cli_ok(*encode, "--device", "cpu", *cache, *runs)  # an older checkpoint than the newest
    (lid,) = [p.name for p in (tmp_path / "cache" / VAL / "latents").iterdir() if p.is_dir()]
    chunks = tmp_path / "cache" / VAL / "latents" / lid / "mean" / "c"
    for f in [p for p in chunks.rglob("*") if p.is_file()]:
        f.unlink()  # the shard is lost: its rows go back to pending
    out = cli_ok("cache", "verify", VAL, "--repair", *cache)
    (command,) = [c for c in out.split("`") if c.startswith("repackctl pack encode")]
    assert command.endswith(f"--entry {VAL}") and "checkpoints/step-0000001" in command, out
    cli_ok(*shlex.split(command)[1:], "--device", "cpu", *cache, *runs)
    entry = DatasetEntry.open(str(tmp_path / "cache"), VAL)
    assert list(entry.group["latents"].group_keys()) == [lid]  # no second group
    assert (entry.latents(lid).done_mask() == 1).all()
    assert "pending" not in cli_ok("cache", "verify", VAL, *cache)
