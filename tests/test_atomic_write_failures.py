"""``write_png_atomic`` / ``write_npy_atomic`` when the write fails.

Both write a temporary ``.<name>.<pid>-<host>.tmp`` and rename it over the target. When the
write or the rename failed (a full disk, Ctrl-C, a target that cannot be replaced) the
temporary stayed beside the target: a samples folder (sampling and refining write thousands
of PNGs) kept a partial file per failure until a later sweep of a dead writer, and a live
process's never. A failed write now leaves the old file only, as ``write_text_atomic`` does.

Real files in a tmp folder; the failures are real ones (an array ``np.save`` refuses, a target
that is a folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repackctl.files import write_npy_atomic, write_png_atomic


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failed_npy_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "latents.npy"
    write_npy_atomic(path, np.arange(4))
    before = path.read_bytes()
    with pytest.raises(ValueError):  # an object array: np.save refuses it without pickles
        write_npy_atomic(path, np.array([{"a": 1}, None], dtype=object))
    assert path.read_bytes() == before
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_a_failed_rename_leaves_no_temporary(tmp_path, kind):
    target = tmp_path / f"000000.{kind}"
    target.mkdir()  # a folder where the file goes: the rename fails after the data is written
    (target / "user.txt").write_text("mine")
    image = np.zeros((4, 4, 3), np.uint8)
    write = write_png_atomic if kind == "png" else write_npy_atomic
    with pytest.raises(OSError):
        write(target, image)
    assert _temporaries(tmp_path) == []
    assert (target / "user.txt").read_text() == "mine"
