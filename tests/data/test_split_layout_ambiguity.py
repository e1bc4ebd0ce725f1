"""Image folders whose layout is ambiguous are refused, never read by a guess.

A class folder named like a split (``vehicles/{bus,car,train}``), a split folder in another case
(``Train/``, ``Val/``) and a ``train/`` without class folders beside a ``val/`` with them would
otherwise drop classes, label images by their split, or read a split unlabelled. Real PNG
folders in ``tmp_path`` through the real `repackctl extract` command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.data.imagefolder import ImageFolderSource
from repackctl.errors import DataError

EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--num-workers", "0"]


def _tree(root: Path, layout: dict[str, int]) -> Path:
    """``{"train/cat": 3, …}`` → that many small PNGs in each folder."""
    for k, (folder, count) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.random.default_rng(100 * k + i).integers(0, 256, (20, 20, 3), np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.png")
    return root


def _refused_before_writing(cache: Path, root: Path, *extra: str) -> str:
    out = cli_refused(DataError.exit_code, *EXTRACT, "--data", f"imagefolder:{root}", *extra)
    assert not cache.exists() or list_entries(str(cache)) == [], out  # nothing written
    return out


def test_class_named_train_beside_other_classes_is_refused(tmp_path, cache_root):
    root = _tree(tmp_path / "vehicles", {"bus": 2, "car": 2, "train": 2})
    out = _refused_before_writing(Path(cache_root), root)
    assert "split folder(s) train/ and other folder(s) bus/, car/" in out
    assert "rename its folder" in out  # the hint: a class named like a split
    (root / "train").rename(root / "train_")  # as the hint says: now three classes
    cli_ok(*EXTRACT, "--data", f"imagefolder:{root}")
    (name,) = list_entries(cache_root)
    entry = DatasetEntry.open(cache_root, name)
    assert entry.n == 6 and entry.class_names == ["bus", "car", "train_"]


def test_split_folders_beside_another_folder_are_refused(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 1, "train/b": 1, "val/a": 1, "extra/a": 1})
    for split in ("train", "val"):
        with pytest.raises(DataError, match="other folder\\(s\\) extra/") as e:
            ImageFolderSource(str(root), split=split)
        assert "train/<class>/" in e.value.hint


@pytest.mark.parametrize("names", [("Train", "Val"), ("VAL", "cat")])
def test_split_folder_in_another_case_is_refused(tmp_path, cache_root, names):
    root = _tree(tmp_path / "caps", {f"{n}/{c}": 1 for n in names for c in ("a", "b", "c")})
    out = _refused_before_writing(Path(cache_root), root)
    cased = [n for n in names if n.lower() in ("train", "val")]
    for name in cased:
        assert f"{name}/" in out and f"{name.lower()}/" in out, out  # named, lower case offered
    assert "not in lower case" in out


def test_flat_train_beside_val_class_folders_is_refused(tmp_path, cache_root):
    root = _tree(tmp_path / "mix", {"train": 3, "val/a": 1, "val/b": 1})
    for split in ("val", "train"):
        out = _refused_before_writing(Path(cache_root), root, "--split", split)
        assert "train/ holds images directly" in out and "val/ has class folders" in out, out
        assert "a/, b/" in out
    (root / "train" / "a").mkdir()
    (root / "train" / "0.png").rename(root / "train" / "a" / "0.png")  # sorted as the hint says
    (root / "train" / "b").mkdir()
    (root / "train" / "1.png").rename(root / "train" / "b" / "1.png")
    cli_ok(*EXTRACT, "--data", f"imagefolder:{root}", "--split", "val")
    (name,) = list_entries(cache_root)
    assert DatasetEntry.open(cache_root, name).labels[:].tolist() == [0, 1]
