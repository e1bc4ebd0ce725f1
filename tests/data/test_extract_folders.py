"""Audit round 6 of `extract` on image folders: a held-out split drawn from a folder that changed
since the other split was extracted, and a class folder that holds no image."""

from __future__ import annotations

import numpy as np
from PIL import Image
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries

ARGS = ["extract", "--resolution", "32", "--num-workers", "0", "--device", "cpu"]


def _keys(cache: str, split: str) -> set[str]:
    (name,) = [n for n in list_entries(cache) if f"--{split}--" in n]
    return {str(k) for k in DatasetEntry.open(cache, name).keys[:]}


def test_held_out_split_of_a_changed_folder_is_refused(tmp_path, cache_root):
    """--val-fraction splits one seeded permutation of each class's listing: after files are
    added, the val split would share files with the train entry (a leak), so it is refused."""
    folder = random_image_folder(tmp_path / "pets", per=10)
    held = ["--data", f"imagefolder:{folder}", "--val-fraction", "0.3"]
    cli_ok(*ARGS, *held, "--split", "train")
    rng = np.random.default_rng(1)
    for i in range(10, 14):  # the user adds images to one class
        image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "cat" / f"{i}.png")
    out = cli_refused(4, *ARGS, *held, "--split", "val")
    assert "would share" in out and "--val-fraction" in out and "cache rm" in out, out
    assert [n for n in list_entries(cache_root) if "--val--" in n] == []  # nothing written


def test_held_out_splits_of_an_unchanged_folder_stay_allowed(tmp_path, cache_root):
    folder = random_image_folder(tmp_path / "pets", per=10)
    held = ["--data", f"imagefolder:{folder}", "--val-fraction", "0.3"]
    cli_ok(*ARGS, *held, "--split", "train")
    cli_ok(*ARGS, *held, "--split", "val")
    cli_ok(*ARGS, *held, "--split", "train")  # a rerun of either split checks again
    train, val = _keys(cache_root, "train"), _keys(cache_root, "val")
    assert len(train) == 14 and len(val) == 6 and not train & val


def test_class_folder_without_images_is_refused(tmp_path, cache_root):
    """A folder of notes beside the class folders would be a class with 0 images: an extra
    class id (num_classes 3 for 2 classes of images) and shifted ids of the classes after it."""
    folder = random_image_folder(tmp_path / "pets")
    (folder / "annotations").mkdir()
    (folder / "annotations" / "list.csv").write_text("file,class\n")
    (folder / "annotations" / "readme.txt").write_text("labels")
    out = cli_refused(4, *ARGS, "--data", f"imagefolder:{folder}")
    assert "annotations" in out and "0 images" in out, out
    assert list_entries(cache_root) == []


def test_class_of_images_without_extensions_is_kept(tmp_path, cache_root):
    """Files without an image extension that are images still make a class (read by header)."""
    folder = random_image_folder(tmp_path / "pets")
    (folder / "eel").mkdir()
    image = np.random.default_rng(2).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "eel" / "scan0001", format="PNG")
    cli_ok(*ARGS, "--data", f"imagefolder:{folder}")
    (name,) = list_entries(cache_root)
    entry = DatasetEntry.open(cache_root, name)
    assert entry.attrs["class_names"] == ["cat", "dog", "eel"]
    assert entry.attrs["written"] == 7


def test_splits_without_train_and_other_classes_are_refused(tmp_path, cache_root):
    """Without train/, each split numbered its own class folders: class b was id 1 in val/
    and id 0 in test/. Refused, for either split; the same classes in both stay allowed."""
    root = tmp_path / "data"
    random_image_folder(root / "val", classes=("a", "b", "c"), per=1)
    random_image_folder(root / "test", classes=("b", "c"), per=1)
    for split in ("test", "val"):
        out = cli_refused(4, *ARGS, "--data", f"imagefolder:{root}", "--split", split)
        assert "only in val/: a/" in out and "train/" in out, out
    assert list_entries(cache_root) == []
    random_image_folder(root / "test", classes=("a",), per=1)
    cli_ok(*ARGS, "--data", f"imagefolder:{root}", "--split", "test")
    (name,) = list_entries(cache_root)
    assert DatasetEntry.open(cache_root, name).attrs["class_names"] == ["a", "b", "c"]
