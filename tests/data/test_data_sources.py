"""Image folders, ImageNet layout, the ADM crop and every bad-input kind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from repackctl.data import crop
from repackctl.data.base import BadImage
from repackctl.data.crop import center_crop, open_image
from repackctl.data.imagefolder import (
    ImageFolderSource,
    escape_name,
    imagenet_source,
    unescape_name,
)
from repackctl.errors import ConfigError, DataError


def _rgb(h=80, w=120, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_rgb(seed=10 * c + i)).save(root / cls / f"{i}.png")
    return root


def test_center_crop_matches_adm_rule():
    img = Image.fromarray(_rgb(300, 500))
    out = center_crop(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # ADM: box-halve 300x500 -> 150x250 (>= 2*64) -> 75x125, then bicubic to short side 64
    ref = Image.fromarray(_rgb(300, 500)).resize((250, 150), Image.BOX).resize((125, 75), Image.BOX)
    ref = np.asarray(ref.resize((107, 64), Image.BICUBIC))[:, 21:85]
    np.testing.assert_array_equal(out, ref)


def test_imagefolder_labels_and_keys(folder):
    src = ImageFolderSource(str(folder))
    assert len(src) == 6 and src.class_names == ["cat", "dog"]
    assert [src.label(i) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert src.key(3) == "dog/0.png"
    assert src.load(0, 32).shape == (32, 32, 3)
    sub = ImageFolderSource(str(folder), num=4, seed=1)
    assert len(sub) == 4 and sub.name.endswith("-n4")


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(2):
        Image.fromarray(_rgb(seed=i)).save(tmp_path / f"{i}.jpg")
    src = ImageFolderSource(str(tmp_path))
    assert src.class_names is None and src.label(0) == -1


def test_imagenet_layout(tmp_path, folder):
    (tmp_path / "inet").mkdir()
    folder.rename(tmp_path / "inet" / "val")
    src = imagenet_source(root=str(tmp_path / "inet"), split="val")
    assert src.name == "imagenet" and len(src) == 6
    with pytest.raises(DataError, match="REPACKCTL_IMAGENET_ROOT"):
        imagenet_source()
    with pytest.raises(DataError, match="not found"):
        imagenet_source(root=str(tmp_path / "inet"), split="train")


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16", "1", "I", "F"])
def test_modes_convert_to_rgb(tmp_path, mode):
    arr = _rgb(40, 40)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
        path = tmp_path / "x.png"
    elif mode in {"I", "F"}:
        img = Image.fromarray(arr[..., 0].astype(np.int32 if mode == "I" else np.float32) * 3)
        path = tmp_path / "x.tif"
    else:
        img = img.convert(mode)
        path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
        if mode == "LA":
            path = tmp_path / "x.png"
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (40, 40)
    if mode == "I;16":  # 16-bit scaled down, not clipped to white
        np.testing.assert_allclose(np.asarray(out)[..., 0], arr[..., 0], atol=1)


def test_bad_inputs_raise_badimage(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    Image.fromarray(_rgb()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="empty"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(BadImage, match="not an image"):
        open_image(tmp_path / "text.jpg")
    with pytest.raises(BadImage, match="corrupt"):
        open_image(tmp_path / "trunc.jpg")


def test_huge_jpeg_decodes_at_reduced_scale(tmp_path, monkeypatch):
    Image.fromarray(_rgb(1200, 1600)).save(tmp_path / "big.jpg", quality=80)
    monkeypatch.setattr(crop, "DRAFT_PIXELS", 100_000)
    img = open_image(tmp_path / "big.jpg", target=64)
    assert img.size[0] < 1600 and min(img.size) >= 128  # draft kept >= 2x the target
    assert center_crop(img, 64).shape == (64, 64, 3)


def test_oversized_non_jpeg_is_skipped(tmp_path, monkeypatch):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(crop, "MAX_PIXELS", 5_000)
    with pytest.raises(BadImage, match="too large"):
        open_image(tmp_path / "big.png")


# ---------------------------------------------------------------------------- splits


def _tree(root, layout: dict[str, int], seed: int = 0):
    """``{"train/cat": 3, …}`` → that many small PNGs in each folder."""
    for k, (folder, count) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(_rgb(20, 20, seed=seed + 100 * k + i)).save(root / folder / f"{i}.png")
    return root


def test_split_folders_are_honoured(tmp_path):
    root = _tree(tmp_path / "d", {"train/cat": 3, "train/dog": 2, "val/cat": 1, "val/dog": 2})
    train = ImageFolderSource(str(root), split="train")
    val = ImageFolderSource(str(root), split="val")
    assert train.class_names == val.class_names == ["cat", "dog"]  # not ["train", "val"]
    assert len(train) == 5 and len(val) == 3
    assert [val.label(i) for i in range(3)] == [0, 1, 1]
    assert val.key(0) == "cat/0.png" and train.name == val.name  # siblings share the dataset id
    assert val.describe()["layout"] == "split-folders"
    with pytest.raises(DataError, match="no split folder 'test'") as e:
        ImageFolderSource(str(root), split="test")
    assert e.value.hint


def test_val_class_ids_come_from_train(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 1, "train/b": 1, "train/c": 1, "val/c": 2})
    val = ImageFolderSource(str(root), split="val")
    assert val.class_names == ["a", "b", "c"] and {val.label(i) for i in range(2)} == {2}
    _tree(root, {"val/zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        ImageFolderSource(str(root), split="val")
    with pytest.raises(DataError, match="itself the 'val' split folder") as e:
        ImageFolderSource(str(root / "val"), split="val")
    assert f"imagefolder:{root}" in e.value.hint


def test_flat_folder_other_split_needs_val_fraction(folder):
    with pytest.raises(DataError, match="would read the training images again") as e:
        ImageFolderSource(str(folder), split="val")
    assert "--val-fraction" in e.value.hint
    with pytest.raises(ConfigError, match="'train' and 'val'"):
        ImageFolderSource(str(folder), split="test", val_fraction=0.2)


def test_val_fraction_is_a_seeded_disjoint_split(tmp_path):
    root = _tree(tmp_path / "d", {"cat": 10, "dog": 7, "owl": 1})
    every = ImageFolderSource(str(root))
    all_keys = {every.key(i) for i in range(len(every))}

    def keys(split, seed=0):
        src = ImageFolderSource(str(root), split=split, seed=seed, val_fraction=0.3)
        return [src.key(i) for i in range(len(src))], src

    train, tsrc = keys("train")
    val, vsrc = keys("val")
    assert set(train).isdisjoint(val) and set(train) | set(val) == all_keys
    assert len(val) == 3 + 2 + 0  # round(0.3·n) per class
    assert keys("val")[0] == val and keys("train")[0] == train  # deterministic
    assert keys("val", seed=5)[0] != val  # the seed matters
    assert vsrc.class_names == tsrc.class_names == ["cat", "dog", "owl"]
    held = vsrc.describe()["held_out"]
    assert held == {"fraction": 0.3, "seed": 0, "counts": {"train": 13, "val": 5}}
    assert tsrc.describe()["held_out"] == held and vsrc.name == tsrc.name


def test_val_fraction_refused_where_splits_exist(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 2, "val/a": 1})
    with pytest.raises(ConfigError, match="already has split folders"):
        ImageFolderSource(str(root), split="val", val_fraction=0.1)


def test_empty_class_folder_is_an_error(folder):
    (folder / "empty").mkdir()
    with pytest.raises(DataError, match="has no files") as e:
        ImageFolderSource(str(folder))
    assert "remove it" in e.value.hint


def test_imagenet_val_uses_train_class_ids(tmp_path):
    root = _tree(tmp_path / "inet", {"train/n01": 1, "train/n02": 1, "val/n02": 2})
    src = imagenet_source(root=str(root), split="val")
    assert src.class_names == ["n01", "n02"] and src.label(0) == 1 and src.name == "imagenet"


# ---------------------------------------------------------------------------- hostile folders


@pytest.mark.parametrize(
    "name",
    ["plain.png", "caf\u00e9.png", "back\\slash.png", "latin1_\udce9\udcff.png", "\\xe9.png"],
)
def test_escape_name_round_trips(name):
    escaped = escape_name(name)
    escaped.encode("utf-8")  # storable
    assert unescape_name(escaped) == name
    if "\\" not in name and "\udce9" not in name:
        assert escaped == name  # ordinary names are unchanged


def test_non_utf8_file_name_is_listed_losslessly(folder):
    raw = os.fsencode(folder / "cat") + b"/latin1_\xe9\xff.png"
    with open(raw, "wb") as f:
        Image.fromarray(_rgb()).save(f, format="PNG")
    src = ImageFolderSource(str(folder))
    keys = [src.key(i) for i in range(len(src))]
    (odd,) = [k for k in keys if "latin1" in k]
    assert odd == "cat/latin1_\\xe9\\xff.png"
    assert os.fsencode(unescape_name(odd)) == b"cat/latin1_\xe9\xff.png"
    assert src.load(keys.index(odd), 16).shape == (16, 16, 3)


def test_symlink_loop_and_duplicate_links(tmp_path):
    root = _tree(tmp_path / "d", {"a": 3})
    (root / "a" / "up").symlink_to("..")  # a loop back to the root
    src = ImageFolderSource(str(root))
    assert len(src) == 3 and src.class_names == ["a"]
    (root / "b").mkdir()
    (root / "b" / "same.png").symlink_to(root / "a" / "0.png")
    (root / "b" / "new.png").write_bytes((root / "a" / "1.png").read_bytes())
    src = ImageFolderSource(str(root))
    assert len(src) == 4 and src.duplicates == 1  # the link to a/0.png counted once
    assert src.describe()["duplicate_links_dropped"] == 1
    (root / "a" / "0link.png").symlink_to(root / "b" / "new.png")  # the link comes first
    src = ImageFolderSource(str(root))
    assert len(src) == 4 and src.duplicates == 2
    assert src.key(src.num - 1) == "b/new.png" and src.label(src.num - 1) == 1  # file beats link
    (root / "c").mkdir()
    (root / "c" / "l.png").symlink_to(root / "a" / "1.png")
    with pytest.raises(DataError, match="only links"):
        ImageFolderSource(str(root))


def test_unreadable_sub_folder_is_skipped_and_listed(folder, monkeypatch):
    (folder / "dog" / "more").mkdir()
    Image.fromarray(_rgb()).save(folder / "dog" / "more" / "x.png")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("more"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root ignores chmod 000
    src = ImageFolderSource(str(folder))
    assert len(src) == 6
    assert src.skipped == [("dog/more/", "unreadable folder: Permission denied")]
    assert src.describe()["skipped_in_listing"][0]["key"] == "dog/more/"


def test_stray_file_beside_class_folders_is_listed(folder):
    (folder / "README.txt").write_text("hello")
    src = ImageFolderSource(str(folder))
    assert ("README.txt", "not in a class folder") in src.skipped and len(src) == 6


def test_unreadable_class_folder_is_listed_not_an_error(folder, monkeypatch):
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("dog"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    src = ImageFolderSource(str(folder))
    assert len(src) == 3 and src.class_names == ["cat", "dog"]  # ids stay those of the folders
    assert src.skipped == [("dog/", "unreadable folder: Permission denied")]
