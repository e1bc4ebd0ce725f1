"""An extract rerun over a folder whose files were renamed or moved is refused, never reused.

Renaming a file, or moving files between class folders without changing the counts, passed
the entry's source check; every shard was done, so the rerun kept the old pixels and features
under the new listing and exit 0 (labels of the cached images no longer those of the folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.caches import random_image_folder
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.errors import CacheError

runner = CliRunner()


def _extract(folder: Path):
    args = ["extract", "--encoder", "patchpix", "--data", f"imagefolder:{folder}"]
    return runner.invoke(app, [*args, "--resolution", "32", "--shard", "4", "--chunk", "2"])


def _state(cache_root) -> dict:
    (name,) = list_entries(cache_root)
    entry = DatasetEntry.open(cache_root, name)
    return {
        "keys": [str(k) for k in entry.keys[:]],
        "images": entry.images[:].copy(),
        "groups": sorted(entry.group.group_keys()),
    }


def test_renamed_or_moved_files_are_refused_and_nothing_is_written(tmp_path, cache_root):
    folder = random_image_folder(tmp_path / "data")
    res = _extract(folder)
    assert res.exit_code == 0, res.output
    before = _state(cache_root)

    (folder / "cat" / "1.png").rename(folder / "cat" / "1b.png")  # same count, new name
    res = _extract(folder)
    out = " ".join(res.output.split())
    assert res.exit_code == CacheError.exit_code, res.output
    assert "holds other files than" in out and "'cat/1.png', now 'cat/1b.png'" in out
    assert "Hint:" in out and "Traceback" not in out
    (folder / "cat" / "1b.png").rename(folder / "cat" / "1.png")

    # two files swap class folders: the counts and the sorted names per class still agree
    (folder / "cat" / "2.png").rename(folder / "dog" / "2x.png")
    (folder / "dog" / "0.png").rename(folder / "cat" / "0x.png")
    res = _extract(folder)
    assert res.exit_code == CacheError.exit_code, res.output
    assert "differ" in res.output
    after = _state(cache_root)
    assert after["keys"] == before["keys"] and after["groups"] == before["groups"]
    assert np.array_equal(after["images"], before["images"])

    (folder / "dog" / "2x.png").rename(folder / "cat" / "2.png")
    (folder / "cat" / "0x.png").rename(folder / "dog" / "0.png")
    res = _extract(folder)  # the folder as extracted: the entry is reused as it is
    assert res.exit_code == 0, res.output
