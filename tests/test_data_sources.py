"""Image folders, ImageNet layout, the ADM crop and every bad-input kind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from repackctl.data import crop
from repackctl.data.base import BadImage
from repackctl.data.crop import center_crop, open_image
from repackctl.data.imagefolder import ImageFolderSource, imagenet_source
from repackctl.errors import DataError


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
