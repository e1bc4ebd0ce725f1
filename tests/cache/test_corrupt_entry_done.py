"""An entry's own `done` chunk that fails its checksum stops the trainings that read it with an
`Error:` naming the chunk and `cache verify --repair`, not zarr's checksum ``ValueError``
(a traceback): `pack train`, and `train dit` on the entry's latents."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_refused

ENTRY = "builtin-n32--train--32px"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("entry-done")
    root = shared_packed_cache(tmp_path_factory, work / "cache", 32)  # two shards of 16
    chunk = root / ENTRY / "done" / "c" / "1"  # rows 16–31 of the images
    data = bytearray(chunk.read_bytes())
    data[2] ^= 0xFF
    chunk.write_bytes(data)
    return root


PACK = "pack train --encoder patchpix --resolution 32 -n 32 --steps 2 --batch-size 8 --ch 16 -c 4"
DIT = "train dit --steps 1 -b 4"


@pytest.mark.parametrize("command", [f"{PACK} --name p2", f"{DIT} --name d2"], ids=["pack", "dit"])
def test_a_corrupt_entry_done_chunk_is_an_error(damaged: Path, command: str) -> None:
    runs = damaged.parent / "runs"
    common = ["--cache", str(damaged), "--runs", str(runs), "--device", "cpu"]
    out = cli_refused(6, *command.split(), "--image-every", "0", *common)
    assert "done: corrupt chunk c/1 (rows 16–31)" in out, out
    assert f"repackctl cache verify {ENTRY} --repair" in out, out
    assert "Traceback" not in out
