"""`refine train --batch-size` above the entry's images is refused for a new run, naming the
setting, its source and the count, before the triplets or the run folder are written (audit C,
finding 4): `--batch-size 100` on a 64-image entry was accepted and every batch repeated
triplets. The batch is global (each process reads its share), so the bound is the entry's
images whatever the world size. The shared stage stack: 16 patchpix images at 32 px."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_refused
from support.stack import shared_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def test_a_batch_above_the_entry_images_is_refused_before_writing(stack):
    triplets_before = sorted(Path(stack["cache"]).rglob("triplets*"))
    args = ["refine", "train", "--pack-run", "pack-tiny", "--name", "rbig", "--steps", "1",
            "--batch-size", "17", "--base-channels", "8", "--disc-channels", "8",
            "--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]  # fmt: skip
    out = cli_refused(2, *args)
    assert "refine.batch_size = 17 (from flag) is larger than the 16 usable images of" in out, out
    assert "--batch-size 16 or less" in out, out
    assert not (Path(stack["runs"]) / "rbig").exists()
    assert sorted(Path(stack["cache"]).rglob("triplets*")) == triplets_before
