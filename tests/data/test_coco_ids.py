"""MS-COCO captions whose ids are spelled as strings, or as strings in one list and numbers in the
other: each caption is matched to its image exactly as in a file of numbers (HEAD matched none
when the two lists spelled ids differently, and a file mixing both in one list was a TypeError
traceback); an id that is neither (a float, null, a list) or one image id listed with two files
is a one-line ``Error:`` naming the file, never captions matched to a guessed image.

Real components: a COCO folder of real PNG files and a real ``captions_train2017.json``, read
by ``CocoCaptions``; one case through `extract --data imagefolder:…` and `captions` (built-in
MiniLM) on a real Zarr cache in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.data.captions import CocoCaptions
from repackctl.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _coco(root: Path, images: list[dict], notes: list[dict]) -> Path:
    """``root`` with ``train2017/a/{0,1,2}.png`` and a captions file of these lists."""
    if not (root / "train2017").is_dir():
        random_image_folder(root / "train2017", classes=("a",), per=3)
    ann = root / "annotations" / "captions_train2017.json"
    ann.parent.mkdir(exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": notes}))
    return ann


def _read(root: Path) -> list[tuple[str, list[str]]]:
    found = CocoCaptions(root, split="train")
    return [(Path(p).name, caps) for p, caps in found]


IMAGES = [{"id": i, "file_name": f"a/{i}.png"} for i in range(3)]
# captions out of order: image 2's first, and two per image with annotation ids 9 and 10
NOTES = [{"id": 10 + 100 * i, "image_id": i, "caption": f"second of {i}"} for i in (2, 0, 1)] + [
    {"id": 9 + 100 * i, "image_id": i, "caption": f"first of {i}"} for i in (2, 0, 1)
]


def _spelled(items: list[dict], field: str, how) -> list[dict]:
    return [{**item, field: how(item[field])} for item in items]


def test_string_ids_read_as_number_ids(tmp_path: Path) -> None:
    want = [(f"{i}.png", [f"first of {i}", f"second of {i}"]) for i in range(3)]
    _coco(tmp_path, IMAGES, NOTES)
    assert _read(tmp_path) == want
    variants = {
        "all strings": (_spelled(IMAGES, "id", str), _spelled(NOTES, "image_id", str), str),
        "images strings": (_spelled(IMAGES, "id", str), NOTES, int),
        "annotations strings": (IMAGES, _spelled(NOTES, "image_id", str), int),
        "zero-padded": (_spelled(IMAGES, "id", lambda v: f"{v:012d}"), NOTES, str),
    }
    for what, (images, notes, note_id) in variants.items():
        notes = _spelled(notes, "id", note_id)  # "109" < "9" as text: still numeric order
        _coco(tmp_path, images, notes)
        found = CocoCaptions(tmp_path, split="train")
        assert found.skipped == [], (what, found.skipped)
        assert _read(tmp_path) == want, what
    mixed = [{**n, "image_id": str(n["image_id"])} if k % 2 else n for k, n in enumerate(NOTES)]
    _coco(tmp_path, IMAGES, mixed)  # numbers and strings in one list: was a TypeError
    assert _read(tmp_path) == want


@pytest.mark.parametrize(
    ("images", "notes", "why"),
    [
        ([{"id": 0.5, "file_name": "a/0.png"}], [], "images[0] has id 0.5, not an integer"),
        (IMAGES, [{"id": 1, "image_id": None, "caption": "x"}], "annotations[0] has image_id null"),
        (IMAGES, [{"id": [1], "image_id": 0, "caption": "x"}], "annotations[0] has id [1], not"),
        (IMAGES, [{"id": 1, "image_id": True, "caption": "x"}], "annotations[0] has image_id true"),
        (
            [*IMAGES, {"id": "2", "file_name": "a/0.png"}],
            NOTES,
            "image id 2 is listed twice, as a/2.png and a/0.png",
        ),
    ],
)
def test_ids_that_name_no_image_one_way_are_refused(
    tmp_path: Path, images: list, notes: list, why: str
) -> None:
    ann = _coco(tmp_path, images, notes)
    with pytest.raises(DataError) as caught:
        CocoCaptions(tmp_path, split="train")
    assert str(caught.value).startswith(f"{ann} is not a COCO captions file: {why}")


def test_captions_encodes_a_coco_file_with_string_image_ids(tmp_path: Path) -> None:
    """Image ids as numbers in ``images``, as strings in ``annotations`` (HEAD: no caption
    matched, "no image has a caption")."""
    root, cache = tmp_path / "coco", tmp_path / "cache"
    _coco(root, IMAGES, _spelled(NOTES, "image_id", str))
    cli_ok(
        "extract", "--data", f"imagefolder:{root / 'train2017'}", *PATCHPIX, "--cache", str(cache)
    )
    (entry,) = list_entries(str(cache))
    out = cli_ok(
        "captions", "--captions", f"coco:{root}", "--max-length", "8", "--cache", str(cache),
        "--device", "cpu",
    )  # fmt: skip
    assert "Warning" not in out, out
    ds = DatasetEntry.open(str(cache), entry)
    (tid,) = ds.text_ids()
    keys = [str(k) for k in ds.keys[:]]
    texts = [str(t) for t in ds.group["text"][tid]["captions"][:]]
    assert {k: t for k, t in zip(keys, texts, strict=True)} == {
        f"a/{i}.png": f"first of {i}\nsecond of {i}" for i in range(3)
    }
