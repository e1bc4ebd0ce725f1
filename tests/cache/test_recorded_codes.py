"""A second encoder's extract keeps the entry's record of each image, whatever the file reads now.

The extract of a second encoder decoded the files again and trusted that decode: a file that
became unreadable since the first extract turned the entry's code to "skipped" while the first
encoder's features row stayed written (`cache verify`: "samples written here whose images are not
written", for good), and a file that reads again since marked a never-written (black) image as
written and encoded its features from the file, with `cache verify` saying ok.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from support.caches import random_image_folder
from support.cli import cli_ok

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry, list_entries

BROKEN = "cat/1.png"


def _extract(folder: Path, encoder: str) -> str:
    args = ["extract", "--encoder", encoder, "--data", f"imagefolder:{folder}"]
    with one_torch_thread():
        return cli_ok(*args, "--resolution", "32", "--shard", "4", "--chunk", "2")


@pytest.mark.parametrize("broken_first", [False, True], ids=["breaks-later", "reads-later"])
def test_a_file_changed_between_two_encoders_keeps_the_entry_record(
    tmp_path, cache_root, broken_first
):
    folder = random_image_folder(tmp_path / "data")
    good = tmp_path / "good.png"
    shutil.copy(folder / BROKEN, good)

    def swap() -> None:  # broken file in, or the good one back
        if (folder / BROKEN).read_bytes() == good.read_bytes():
            (folder / BROKEN).write_bytes(b"not an image")
        else:
            shutil.copy(good, folder / BROKEN)

    if broken_first:
        swap()
    _extract(folder, "patchpix")
    (name,) = list_entries(cache_root)
    entry = DatasetEntry.open(cache_root, name)
    before = entry.done[:].copy()
    images = entry.images[:].copy()
    i = [str(k) for k in entry.keys[:]].index(BROKEN)
    assert (before[i] == WRITTEN) != broken_first and PENDING not in before

    swap()
    out = _extract(folder, "builtin")
    assert (f"skipped {BROKEN}" in out) == broken_first, out  # the entry's record, as before
    entry = DatasetEntry.open(cache_root, name)
    np.testing.assert_array_equal(entry.done[:], before)  # the record is kept
    np.testing.assert_array_equal(entry.images[:], images)
    for fid in entry.feature_ids():  # every encoder has a row exactly for the written images
        np.testing.assert_array_equal(entry.features(fid).done[:], before, err_msg=fid)
    assert "ok" in cli_ok("cache", "verify", name)
