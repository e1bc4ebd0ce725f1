"""`pack train --batch-size` and `--grid-images` above the entry's usable images are refused for
a new run, naming the setting, its source and the count, before the run folder is written
(audit C, findings 4 and 8): `--batch-size 100` on a 64-image entry was accepted and every
batch repeated images; `--grid-images 100000` drew the entry's 64 images while config.json
recorded 100000. The batch is global (each process reads its share of it), so the bound is the
entry's images whatever the world size. A batch and a grid of exactly the entry's images train.

A real patchpix cache (16 built-in images, 32 px) and real CLI calls.
"""

from __future__ import annotations

from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

base_cache, cache = patchpix_fixtures("s37-batch-grid-fit", num=16)

TINY = ["-c", "4", "--ch", "8", "--steps", "1", "--device", "cpu"]
ENTRY = "builtin-n16--train--32px"


def _train(cache, name: str, *flags: str) -> list[str]:
    runs = cache.parent / "runs"
    return ["pack", "train", "--name", name, *TINY, *flags, "--cache", str(cache), "--runs",
            str(runs)]  # fmt: skip


def test_a_batch_or_grid_above_the_entry_is_refused_before_writing(cache):
    runs = cache.parent / "runs"
    out = cli_refused(2, *_train(cache, "b", "--batch-size", "17", "--image-every", "0"))
    assert "pack.batch_size = 17 (from flag) is larger than the 16 usable images" in out, out
    assert ENTRY in out and "--batch-size 16 or less" in out, out
    grid = ["--batch-size", "4", "--grid-images", "17", "--image-every", "1"]
    out = cli_refused(2, *_train(cache, "g", *grid))
    assert "pack.grid_images = 17 (from flag) is more than the 16 usable images" in out, out
    assert not (runs / "b").exists() and not (runs / "g").exists()

    cli_ok(*_train(cache, "ok", "--batch-size", "16", "--grid-images", "16", "--image-every", "1"))
    assert (runs / "ok" / "images" / "step-0000001.png").is_file()
