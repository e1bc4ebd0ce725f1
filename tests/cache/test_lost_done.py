"""A features or latents group whose `done` array was lost is not taken for an interrupted
creation: its rerun refuses to delete the written rows, `cache verify` says what it holds, and
`cache rm --features / --latents` removes it.

Without ``done``, a group lacks one of its required arrays, which is what a killed creation
leaves; `extract` and `pack encode` deleted it, with every written token or latent, and computed
it again without a word, and `cache verify` called it "creation interrupted".
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n32--train--32px"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "32", "--num-workers", "0"]


def _chunks(group: Path) -> list[Path]:
    return sorted(p for p in group.rglob("*") if p.is_file() and "c" in p.parts[-4:])


def test_groups_that_lost_done_are_kept(tmp_path: Path, tmp_path_factory) -> None:
    root = shared_packed_cache(tmp_path_factory, tmp_path / "cache", 32)
    common = ["--cache", str(root), "--device", "cpu"]
    runs = ["--runs", str(tmp_path / "runs")]
    entry = DatasetEntry.open(str(root), ENTRY)
    (lid,), (fid,) = entry.latent_ids(), entry.feature_ids()
    for kind, gid in (("features", fid), ("latents", lid)):
        group = root / ENTRY / kind / gid
        shutil.move(group / "done", tmp_path / "done")
        kept = _chunks(group)
        assert kept  # the written tokens / latents
        rerun = ["extract", *SRC] if kind == "features" else ["pack", "encode", "--run", "pk"]
        out = cli_refused(6, *rerun, *common, *(runs if kind == "latents" else []))
        assert "holds written samples" in out and "not removed" in out, out
        assert _chunks(group) == kept  # nothing deleted
        out = cli_refused(6, "cache", "verify", ENTRY, "--cache", str(root))
        assert "holds written samples" in out and "interrupted" not in out, out
        assert f"repackctl cache rm {ENTRY} --{kind} {gid} --yes" in out, out
        shutil.move(tmp_path / "done", group / "done")  # put back: the next group's turn
    cli_ok("cache", "verify", ENTRY, "--cache", str(root))
    shutil.rmtree(root / ENTRY / "latents" / lid / "done")
    shutil.rmtree(root / ENTRY / "features" / fid / "done")
    # the way out the hints name: remove the group, make it again
    cli_ok("cache", "rm", ENTRY, "--latents", lid, "--yes", "--cache", str(root))
    cli_ok("cache", "rm", ENTRY, "--features", fid, "--yes", "--cache", str(root))
    cli_ok("extract", *SRC, *common)
    out = cli_ok("pack", "encode", "--run", "pk", *common, *runs)
    assert "written now │ 32" in out, out
    cli_ok("cache", "verify", ENTRY, "--cache", str(root))
