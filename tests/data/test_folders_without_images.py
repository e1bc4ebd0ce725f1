"""Image folders that hold no image, whatever the layout, and the data-source messages of audit
C (session 37): each is refused before anything is written, naming the folder and what it
holds, where an entry (or a class) of 0 images was written and the extract exited 0."""

from __future__ import annotations

import os

import pytest
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import DataError

ARGS = ["extract", "--resolution", "32", "--num-workers", "0", "--device", "cpu"]
REFUSED = DataError.exit_code


def _refused(cache, folder, *more: str) -> str:
    out = cli_refused(REFUSED, *ARGS, "--data", f"imagefolder:{folder}", *more)
    assert list_entries(cache) == [], out  # nothing written
    return out


def test_flat_folder_without_images_is_refused(tmp_path, cache_root):
    """A flat folder of one note: a 12.7 MB entry of 0 images, exit 0 (`-n 8` said only that
    the folder holds 1 input)."""
    folder = tmp_path / "vdir"
    folder.mkdir()
    (folder / "f").write_text("x")
    out = _refused(cache_root, folder, "-n", "8")
    assert f"image folder {folder} holds no image (1 file(s): f: not an image)" in out, out
    assert "Hint: put images" in out, out


def test_class_folders_of_corrupt_pngs_only_are_refused(tmp_path, cache_root):
    """An image extension is no image: class folders holding only a text file named .png and
    an empty .jpg made an entry of 0 images, exit 0."""
    folder = tmp_path / "cf"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "bad.png").write_text("not a png")
    (folder / "a" / "zero.jpg").write_bytes(b"")
    out = _refused(cache_root, folder)
    assert f"image folder {folder} holds no image (2 file(s): " in out, out
    assert "a/bad.png: not an image" in out and "a/zero.jpg: empty file" in out, out
    assert "its entry would hold 0 images" in out, out


def test_split_folder_without_images_is_refused(tmp_path, cache_root):
    """A split folder of notes beside a train/ of class folders was said to hold "images
    directly"; a split layout read unlabelled wrote an entry of 0 images."""
    root = tmp_path / "data"
    random_image_folder(root / "train", classes=("a",), per=1)
    (root / "val").mkdir()
    (root / "val" / "notes.txt").write_text("to do")
    out = _refused(cache_root, root, "--split", "val")
    assert f"split folder {root}/val holds no image (1 file(s): notes.txt: not an image)" in out
    assert "holds images directly" not in out, out

    plain = tmp_path / "plain"
    for split in ("train", "val"):
        (plain / split).mkdir(parents=True)
        (plain / split / "n.txt").write_text("x")
    out = _refused(cache_root, plain, "--split", "val")
    assert f"split 'val' of {plain} holds no image (1 file(s): n.txt: not an image)" in out, out


def test_folder_of_dangling_links_is_refused_and_named(tmp_path, cache_root):
    """A link whose target is missing is named as one, not "corrupt or truncated"; a folder of
    only such links holds no image."""
    folder = tmp_path / "links"
    folder.mkdir()
    os.symlink(tmp_path / "gone.png", folder / "y.png")
    out = _refused(cache_root, folder)
    assert "no image in split 'train'" in out, out
    assert f"y.png: a link whose target is missing ({tmp_path}/gone.png)" in out, out


def test_dangling_link_beside_images_is_skipped_as_a_link(tmp_path, cache_root):
    folder = random_image_folder(tmp_path / "pets")
    os.symlink(tmp_path / "gone.png", folder / "cat" / "dangling.png")
    out = cli_ok(*ARGS, "--data", f"imagefolder:{folder}")
    assert "skipped cat/dangling.png: a link whose target is missing" in out, out
    assert "corrupt or truncated" not in out, out
    (name,) = list_entries(cache_root)
    entry = DatasetEntry.open(cache_root, name)
    assert entry.attrs["written"] == 6, entry.attrs
    (listed,) = entry.attrs["source"]["skipped_in_listing"]
    assert listed["key"] == "cat/dangling.png", listed
    assert listed["reason"].startswith("a link whose target is missing"), listed


@pytest.mark.parametrize(
    ("fraction", "split", "fit"),
    [("0.01", "val", "0.17 or more"), ("0.99", "train", "0.83 or less")],
)
def test_val_fraction_that_leaves_a_split_empty_names_the_counts(
    tmp_path, cache_root, fraction, split, fit
):
    """`--val-fraction 0.01` of classes of 3 holds out round(0.03) = 0 files: the hint said "put
    images (or class sub-folders) there", of a val/ folder that does not exist."""
    folder = random_image_folder(tmp_path / "pets")  # cat: 3, dog: 3
    out = _refused(cache_root, folder, "--val-fraction", fraction, "--split", split)
    assert f"--val-fraction {fraction} leaves split '{split}' of {folder} no file" in out, out
    assert "2 class(es) holds 3 file(s) (cat: 3, dog: 3)" in out, out
    assert f"give --val-fraction {fit}" in out, out
    assert "sub-folders" not in out, out
    given = fit.split()[0]
    cli_ok(*ARGS, "--data", f"imagefolder:{folder}", "--val-fraction", given, "--split", split)


def test_class_folder_of_dangling_links_only_is_refused(tmp_path, cache_root):
    """A class folder whose only file is a link whose target is missing was a class of 0
    images (its link skipped as "corrupt or truncated"), beside classes of images."""
    folder = random_image_folder(tmp_path / "pets")
    (folder / "eel").mkdir()
    os.symlink(tmp_path / "gone.png", folder / "eel" / "x.png")
    out = _refused(cache_root, folder)
    assert f"class folder {folder}/eel holds no image (1 file(s): eel/x.png: a link" in out, out
    assert "class with 0 images" in out, out
