"""A CSV caption index whose row has more or fewer fields than its header is refused.

``csv`` keeps the fields past the header aside and fills missing ones with nothing, so a caption
with an unquoted comma (``a.png,a grey cat, sitting on a red sofa``) was stored cut at the comma,
silently. Real PNGs and index files in ``tmp_path``, read through the real `repackctl extract` and
`repackctl captions` command line (built-in MiniLM text encoder, on the CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.data.captions import FolderCaptions
from repackctl.errors import DataError

CPU = ["--device", "cpu"]
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--num-workers", "0", *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _cats(root: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (36, 36, 3), np.uint8)
        Image.fromarray(pixels).save(root / "cat" / f"cat_00{i}.png")
    return root


def test_unquoted_comma_in_a_caption_is_refused_before_anything_is_written(tmp_path):
    data, cache = _cats(tmp_path / "imgs"), tmp_path / "cache"
    index = data / "captions.csv"
    index.write_text(
        "file,caption\ncat/cat_001.png,a black cat\ncat/cat_000.png,a grey cat, sitting on a sofa\n"
    )
    cli_ok(*EXTRACT, "--data", f"imagefolder:{data}", "--cache", str(cache))
    (entry,) = list_entries(str(cache))
    args = ["captions", "--captions", str(index), "--max-length", "8", "--cache", str(cache), *CPU]
    out = cli_refused(DataError.exit_code, *args)
    assert f"{index} line 3 has 3 fields, more than the 2 columns" in out
    assert "unquoted comma" in out and "quote" in out and "JSONL" in out
    assert DatasetEntry.open(str(cache), entry).text_ids() == []  # nothing written

    # quoted, as the hint says: the whole caption is kept
    index.write_text(
        'file,caption\ncat/cat_001.png,a black cat\ncat/cat_000.png,"a grey cat, sitting on a'
        ' sofa"\n'
    )
    cli_ok(*args)
    ds = DatasetEntry.open(str(cache), entry)
    (tid,) = ds.text_ids()
    caps = ds.group["text"][tid]["captions"][:]
    texts = {str(k): str(c) for k, c in zip(ds.keys[:], caps, strict=True)}
    assert texts["cat/cat_000.png"] == "a grey cat, sitting on a sofa"


def test_a_row_with_fewer_fields_than_the_header_is_refused(tmp_path):
    data = _cats(tmp_path / "imgs")
    (data / "index.csv").write_text("file,caption\ncat/cat_000.png,a cat\ncat/cat_001.png\n")
    with pytest.raises(DataError, match="index.csv line 3 has 1 fields, fewer than the 2") as e:
        FolderCaptions(data, index="index.csv")
    assert "JSONL" in e.value.hint
    (data / "index.csv").write_text("file,caption\ncat/cat_000.png,a cat\n  \n")  # blank line
    assert FolderCaptions(data, index="index.csv").skipped == [("index.csv:3", "empty caption")]
