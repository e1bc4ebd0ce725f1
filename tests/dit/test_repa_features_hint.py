"""The command `train dit` names for REPA features with pending rows.

It was built from the features id alone (`extract --encoder … --layer …`), so it lost how the
group was made: its precision, weights and flips. Run as printed on bf16 features, it asked for
fp32 features of the same id (refused, or another group) and the pending rows stayed pending.
Now it is the exact command that made the group, and running it as printed lets the DiT train.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from support.caches import cli_pack_stack
from support.cli import cli_ok, cli_refused

ENTRY = "builtin-n16--train--32px"


def test_the_hint_for_pending_repa_features_finishes_them(tmp_path: Path) -> None:
    cache, runs = cli_pack_stack(tmp_path, val=None, precision="bf16")
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu", *cache, *runs)
    (fid,) = [p.name for p in (tmp_path / "cache" / ENTRY / "features").iterdir() if p.is_dir()]
    chunks = tmp_path / "cache" / ENTRY / "features" / fid / "tokens" / "c"
    (shard,) = [
        p for p in chunks.rglob("*") if p.is_file() and p.relative_to(chunks).parts[0] == "1"
    ]
    shard.unlink()  # rows 8–15 are lost: the repair marks them pending
    cli_ok("cache", "verify", ENTRY, "--repair", *cache)

    dit = ["train", "dit", "--size", "tiny", "--steps", "1", "-b", "8", "--device", "cpu"]
    dit += ["--pack-run", "pk", "--name", "d", "--image-every", "0", *cache, *runs]
    out = cli_refused(6, *dit)
    assert f"features {fid} of {ENTRY} are incomplete" in out, out
    (command,) = [c for c in out.split("`") if c.startswith("repackctl extract")]
    assert "--precision bf16" in command, command
    cli_ok(*shlex.split(command)[1:], "--num-workers", "0", "--device", "cpu", *cache)
    assert "pending" not in cli_ok("cache", "verify", ENTRY, *cache)
    cli_ok(*dit)  # REPA reads the finished features
