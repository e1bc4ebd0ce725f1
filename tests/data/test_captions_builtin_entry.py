"""`repackctl captions --captions FILE --entry <built-in entry>` is refused, and the refusal says
what is wrong: the entry holds built-in images, whose captions are generated (HEAD said the entry
had "no built-in or folder source" and told the user to pass --captions FILE, what they had just
done). The hint is the command to type instead: the same entry without --captions. The same with
``--captions coco:ROOT`` of a real COCO folder (it was read first, and matched no image). Nothing
is written; the command the hint names then works.

Real components: a built-in patchpix cache (`extract`), a caption index, a COCO folder and
`captions` (built-in MiniLM) through the CLI on a real Zarr cache in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import patchpix_cache, random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries

pytestmark = pytest.mark.usefixtures("one_thread")


def test_captions_file_for_a_builtin_entry_names_the_command_to_type(tmp_path: Path) -> None:
    cache = patchpix_cache(tmp_path / "cache", num=4)
    (entry,) = list_entries(str(cache))
    index = tmp_path / "caps.jsonl"
    index.write_text(json.dumps({"file": "a/0.png", "caption": "a cat"}) + "\n")
    coco = tmp_path / "coco"
    random_image_folder(coco / "train2017", classes=("a",), per=1)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "captions_train2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 0, "file_name": "a/0.png"}],
                "annotations": [{"id": 1, "image_id": 0, "caption": "a cat"}],
            }
        )
    )
    common = ["--entry", entry, "--max-length", "8", "--cache", str(cache), "--device", "cpu"]
    for where in (str(index), f"coco:{coco}"):
        out = cli_refused(2, "captions", "--captions", where, *common)
        assert f"Error: --captions {where} is for image-folder entries, and {entry} holds " in out
        assert "built-in images: their captions are generated" in out, out
        assert f"Hint: drop --captions: `repackctl captions --entry {entry}`" in out, out
        assert "no built-in or folder source" not in out, out
        assert DatasetEntry.open(str(cache), entry).text_ids() == []
    cli_ok("captions", *common)  # what the hint says to type
    assert len(DatasetEntry.open(str(cache), entry).text_ids()) == 1
