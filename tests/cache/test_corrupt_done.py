"""A `done` chunk that fails its checksum stops `pack encode` with an `Error:`, not a traceback.

The done codes of the features and latents groups were read straight through zarr: a corrupt
chunk raised zarr's checksum ``ValueError`` out of `pack encode` (and `pack train`). Now it names
the chunk and `cache verify --repair`, which marks its rows pending for the rerun to rewrite.
"""

from __future__ import annotations

from pathlib import Path

from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n32--train--32px"


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[2] ^= 0xFF
    path.write_bytes(data)


def test_corrupt_done_chunks_are_named_then_repaired(tmp_path: Path, tmp_path_factory) -> None:
    root = shared_packed_cache(tmp_path_factory, tmp_path / "cache", 32)  # two shards of 16
    common = ["--cache", str(root), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    entry = DatasetEntry.open(str(root), ENTRY)
    (lid,), (fid,) = entry.latent_ids(), entry.feature_ids()
    for group in (f"latents/{lid}", f"features/{fid}"):
        chunk = root / ENTRY / group / "done" / "c" / "1"  # rows 16–31
        kept = chunk.read_bytes()
        _flip_bytes(chunk)
        out = cli_refused(6, "pack", "encode", "--run", "pk", *common)
        assert f"{group}/done: corrupt chunk c/1 (rows 16–31)" in out, out
        assert f"repackctl cache verify {ENTRY} --repair" in out, out
        assert chunk.read_bytes() != kept  # nothing rewritten on the way
    out = cli_refused(6, "cache", "verify", ENTRY, "--cache", str(root))
    assert "corrupt chunk c/1" in out, out
    cli_ok("cache", "verify", ENTRY, "--repair", "--cache", str(root))
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", "32", "--num-workers", "0"]
    cli_ok("extract", *src, "--cache", str(root), "--device", "cpu")
    out = cli_ok("pack", "encode", "--run", "pk", *common)
    assert "written now │ 16" in out and "already done │ 16" in out, out
