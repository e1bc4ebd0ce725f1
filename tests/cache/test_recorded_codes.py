"""A second encoder's extract keeps the entry's record of each image, whatever the file reads now.

The extract of a second encoder decoded the files again and trusted that decode: a file that
became unreadable since the first extract turned the entry's code to "skipped" while the first
encoder's features row stayed written (`cache verify`: "samples written here whose images are not
written", for good), and a file that reads again since marked a never-written (black) image as
written and encoded its features from the file, with `cache verify` saying ok.

An entry that records its files' fingerprints refuses a changed file of an image it holds
before anything is written (tests/cache/test_replaced_images.py); an entry made before them (its
``fingerprints`` deleted here) is not checked, and its record is kept as before. An input
recorded as skipped has no fingerprint: it stays skipped whatever the file holds now.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import FINGERPRINTS, PENDING, WRITTEN, DatasetEntry, list_entries
from repackctl.errors import CacheError

BROKEN = "cat/1.png"


def _args(folder: Path, encoder: str) -> list[str]:
    args = ["extract", "--encoder", encoder, "--data", f"imagefolder:{folder}"]
    return [*args, "--resolution", "32", "--shard", "4", "--chunk", "2"]


def _extract(folder: Path, encoder: str) -> str:
    with one_torch_thread():
        return cli_ok(*_args(folder, encoder))


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
    if not broken_first:  # the file of an image the entry holds changed: refused
        out = cli_refused(CacheError.exit_code, *_args(folder, "builtin"))
        assert f"'{BROKEN}'" in out and "nothing was written" in out, out
        del entry.group[FINGERPRINTS]  # an entry made before fingerprints: the record is kept
    out = _extract(folder, "builtin")
    assert (f"skipped {BROKEN}" in out) == broken_first, out  # the entry's record, as before
    entry = DatasetEntry.open(cache_root, name)
    np.testing.assert_array_equal(entry.done[:], before)  # the record is kept
    np.testing.assert_array_equal(entry.images[:], images)
    for fid in entry.feature_ids():  # every encoder has a row exactly for the written images
        np.testing.assert_array_equal(entry.features(fid).done[:], before, err_msg=fid)
    assert "ok" in cli_ok("cache", "verify", name)
