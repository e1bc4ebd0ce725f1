"""Captioned sources: built-in captions, COCO 2017 captions, a folder + JSONL/CSV index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from repackctl.data.builtin import BuiltinSource
from repackctl.data.captions import (
    SHAPE_NOUNS,
    BuiltinCaptions,
    CaptionedImage,
    CocoCaptions,
    FolderCaptions,
    builtin_captions,
    colour_name,
)
from repackctl.errors import DataError


def test_builtin_captions_are_deterministic_and_varied():
    source = BuiltinSource(split="train", num=40, seed=0)
    captioned = BuiltinCaptions(split="train", num=40, seed=0)
    firsts = set()
    for i in range(40):
        caps = builtin_captions(i)
        assert caps == builtin_captions(i) == captioned[i].captions
        assert 3 <= len(caps) <= 5 and len(set(caps)) == len(caps)
        assert all(c and c == " ".join(c.split()) for c in caps)
        noun, synonym = SHAPE_NOUNS[source.class_names[source.label(i)]]
        assert sum(noun in c or synonym in c for c in caps) == len(caps)
        firsts.add(caps[0])
    assert len(firsts) == 40  # every image gets its own description
    assert builtin_captions(3, seed=1) != builtin_captions(3)
    assert builtin_captions(3, split="val") != builtin_captions(3)
    image, caps = captioned[7]  # unpacks as (index, captions)
    assert image == 7 and isinstance(captioned[7], CaptionedImage)
    assert len(list(captioned)) == len(captioned) == 40 and captioned.skipped == []


def test_builtin_captions_name_the_drawn_attributes():
    scene = BuiltinSource(num=10).scene(0)
    caps = builtin_captions(0)
    assert colour_name(scene["obj_a"]) in caps[-1]
    texture = {"gradient": "gradient", "noise": "mottled", "stripes": "striped"}
    texture["checker"] = "checkered"
    assert texture[scene["bg_kind"]] in caps[0]


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((1, 0, 0), "red"),
        ((1, 1, 1), "white"),
        ((0, 0, 0.4), "dark blue"),
        ((0.5, 0.5, 0.5), "light grey"),
    ],
)
def test_colour_names(rgb, name):
    assert colour_name(np.array(rgb, dtype=float)) == name


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake")  # existence is all a caption source checks


def _coco(root: Path, split: str = "val") -> None:
    _png(root / f"{split}2017" / "000000000001.jpg")
    _png(root / f"{split}2017" / "000000000002.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg"},
            {"id": 2, "file_name": "000000000002.jpg"},
            {"id": 3, "file_name": "000000000003.jpg"},  # not on disk
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A cat on a mat."},
            {"id": 11, "image_id": 1, "caption": "  A  sleepy cat\n"},
            {"id": 12, "image_id": 1, "caption": "   "},
            {"id": 13, "image_id": 2, "caption": "Two dogs."},
            {"id": 14, "image_id": 3, "caption": "Lost image."},
            {"id": 15, "image_id": 99, "caption": "Unknown image id."},
        ],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(data))


def test_coco_captions_group_and_skip(tmp_path):
    _coco(tmp_path)
    coco = CocoCaptions(tmp_path, split="val")
    assert len(coco) == 2
    image, caps = coco[0]
    assert image == tmp_path / "val2017" / "000000000001.jpg"
    assert caps == ["A cat on a mat.", "A sleepy cat"]
    assert coco[1].captions == ["Two dogs."]
    reasons = dict(coco.skipped)
    assert reasons["annotation 12 (image 1)"] == "empty caption"
    assert reasons["annotation 14 (image 3)"].startswith("missing image")
    assert reasons["annotation 15 (image 99)"] == "image id not in the images list"
    assert len(coco.skipped) == 3


def test_coco_errors(tmp_path):
    with pytest.raises(DataError, match="no COCO train captions"):
        CocoCaptions(tmp_path, split="train")
    _coco(tmp_path, "train")
    (tmp_path / "annotations" / "captions_train2017.json").write_bytes(b'{"images": "\xff\xfe"}')
    with pytest.raises(DataError, match="not a UTF-8 JSON"):
        CocoCaptions(tmp_path, split="train")


def test_folder_captions_jsonl(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png")
    lines = [
        json.dumps({"file": "a.png", "caption": "first of a"}).encode(),
        json.dumps({"file": "sub/b.png", "caption": "b"}).encode(),
        json.dumps({"file": "a.png", "caption": "second of a"}).encode(),
        b'{"file": "a.png", "caption": "caf\xe9 latin-1"}',  # not UTF-8
        b"{not json",
        json.dumps({"file": "a.png", "caption": ""}).encode(),
        json.dumps({"file": "missing.png", "caption": "gone"}).encode(),
        json.dumps({"file": "../outside.png", "caption": "escape"}).encode(),
        json.dumps({"file": "a.png"}).encode(),
        b"",
    ]
    (tmp_path / "captions.jsonl").write_bytes(b"\n".join(lines))
    src = FolderCaptions(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), c) for p, c in src] == [
        ("a.png", ["first of a", "second of a"]),
        ("sub/b.png", ["b"]),
    ]
    assert src.skipped == [
        ("captions.jsonl:4", "not UTF-8"),
        ("captions.jsonl:5", "not valid JSON"),
        ("captions.jsonl:6", "empty caption"),
        ("captions.jsonl:7", "missing image missing.png"),
        ("captions.jsonl:8", "'../outside.png' is outside the image folder"),
        ("captions.jsonl:9", "no 'caption' string"),
    ]


def test_folder_captions_csv(tmp_path):
    _png(tmp_path / "x.jpg")
    _png(tmp_path / "y.jpg")
    text = (
        b'file,caption\nx.jpg,"a red disc, small"\ny.jpg,plain\n'
        b"y.jpg,\xff\xfe broken\nx.jpg,\n,no file\nx.jpg,another one\n"
    )
    (tmp_path / "index.csv").write_bytes(text)
    src = FolderCaptions(tmp_path, index="index.csv")
    assert [c for _, c in src] == [["a red disc, small", "another one"], ["plain"]]
    assert src.skipped == [
        ("index.csv:4", "not UTF-8"),
        ("index.csv:5", "empty caption"),
        ("index.csv:6", "empty file name"),
    ]


def test_a_relative_index_is_the_working_directory_s_or_the_folder_s_never_a_guess(
    tmp_path, monkeypatch
):
    images, work = tmp_path / "images", tmp_path / "work"
    _png(images / "a.png")
    work.mkdir()
    (work / "caps.csv").write_text("file,caption\na.png,from the working directory\n")
    monkeypatch.chdir(work)
    src = FolderCaptions(images, index="caps.csv")  # only the working directory has it
    assert src.index == work / "caps.csv"
    assert [c for _, c in src] == [["from the working directory"]]
    (images / "caps.csv").write_text("file,caption\na.png,from the image folder\n")
    with pytest.raises(DataError, match="names two files") as err:
        FolderCaptions(images, index="caps.csv")
    assert str(work / "caps.csv") in str(err.value) and str(images / "caps.csv") in str(err.value)
    (work / "caps.csv").unlink()
    assert [c for _, c in FolderCaptions(images, index="caps.csv")] == [["from the image folder"]]


def test_folder_captions_errors(tmp_path):
    with pytest.raises(DataError, match="no captions.jsonl or captions.csv"):
        FolderCaptions(tmp_path)
    (tmp_path / "bad.csv").write_text("image,text\na.png,x\n")
    with pytest.raises(DataError, match="not 'file' and 'caption'"):
        FolderCaptions(tmp_path, index="bad.csv")
    with pytest.raises(DataError, match="not an existing"):
        FolderCaptions(tmp_path, index="nope.txt")
