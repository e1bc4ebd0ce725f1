"""`repackctl captions --captions coco:ROOT` with a JSON file that is not COCO captions (another
format saved under the COCO name, an annotation without ``image_id``): a one-line ``Error:``
naming the file and what is missing, never a KeyError traceback; nothing is written. A file of
the COCO shape is read.

Real components: `extract --data imagefolder:…` and `captions` (built-in MiniLM) through the CLI
on a real Zarr cache in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_file_that_is_not_coco_captions_is_refused_without_a_traceback(tmp_path: Path) -> None:
    root, cache = tmp_path / "coco", tmp_path / "cache"
    random_image_folder(root / "train2017", classes=("a",), per=2)
    cli_ok(
        "extract", "--data", f"imagefolder:{root / 'train2017'}", *PATCHPIX, "--cache", str(cache)
    )
    (entry,) = list_entries(str(cache))
    ann = root / "annotations" / "captions_train2017.json"
    ann.parent.mkdir()
    args = ["captions", "--captions", f"coco:{root}", "--max-length", "8", "--cache", str(cache)]
    args += ["--device", "cpu"]
    images = [{"id": i, "file_name": f"a/{i}.png"} for i in range(2)]

    for data, why in (
        ([{"image": "a/0.png", "caption": "a cat"}], "it holds a JSON list, not an object"),
        ({"images": images, "annotations": [{"id": 7, "caption": "a cat"}]}, "annotations[0]"),
        ({"images": {"0": "a/0.png"}, "annotations": []}, "its 'images' is not a list"),
    ):
        ann.write_text(json.dumps(data))
        out = cli_refused(4, *args)
        assert f"{ann} is not a COCO captions file: {why}" in out, out
        assert DatasetEntry.open(str(cache), entry).text_ids() == []

    notes = [{"id": 10 + i, "image_id": i, "caption": f"picture {i}"} for i in range(2)]
    ann.write_text(json.dumps({"images": images, "annotations": notes}))
    cli_ok(*args)
    (tid,) = DatasetEntry.open(str(cache), entry).text_ids()
    texts = DatasetEntry.open(str(cache), entry).group["text"][tid]["captions"][:]
    assert sorted(str(t) for t in texts) == ["picture 0", "picture 1"]
