"""A flat folder's entries made while its caption index was a row: `--num` and `--val-fraction`.

Since its `captions.jsonl` / `captions.csv` are left out of a flat image folder's listing, an
entry extracted before (the index a row: skipped, not an image) is listed with them again, but
only where the entry holds the index's key. Two entries of that listing do not: a `--num`
subset that did not pick the index (it still counts it in ``total``, which also seeds the
subset), refused "made from another source (total: 11 vs 10)" with a hint that removes it; and
the other split of a `--val-fraction` pair (the index landed in the split not yet extracted),
refused as sharing files with it, "the folder changed since", which it had not.

An entry of the listing of before is made as the s30 test makes one: a stand-in non-image that
sorts where ``captions.jsonl`` does, renamed to it (and its key, where the entry holds it).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry

INDEX = "captions.jsonl"


def _flat_with_stand_in(tmp_path: Path) -> tuple[Path, Path]:
    """A flat folder of 6 images and a stand-in of its caption index; (folder, stand-in)."""
    classes = random_image_folder(tmp_path / "src")
    folder = tmp_path / "flat"
    folder.mkdir()
    for p in sorted(classes.rglob("*.png")):
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    stand_in = folder / "captions.jsonm"  # not an image, sorted where captions.jsonl is
    stand_in.write_text("not an image")
    return folder, stand_in


def _index_written(cache: Path, entries: list[str], folder: Path, stand_in: Path) -> None:
    """The stand-in becomes the caption index, in the folder and in the entries' keys."""
    for name in entries:
        entry = DatasetEntry.open(str(cache), name)
        keys = [str(k) for k in entry.keys[:]]
        if stand_in.name in keys:
            entry.keys[keys.index(stand_in.name)] = INDEX
    stand_in.unlink()
    rows = [{"file": p.name, "caption": "a photo"} for p in sorted(folder.glob("*.png"))]
    (folder / INDEX).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _entry(out: str) -> str:
    return re.search(r"entry │ (\S+)", out)[1]


def test_a_subset_entry_that_did_not_pick_the_index_resumes(tmp_path: Path) -> None:
    folder, stand_in = _flat_with_stand_in(tmp_path)
    cache = tmp_path / "cache"
    base = ["extract", "--data", f"imagefolder:{folder}", "--cache", str(cache), "-n", "3"]
    first = cli_ok(*base, *PATCHPIX)
    name = _entry(first)
    keys = [str(k) for k in DatasetEntry.open(str(cache), name).keys[:]]
    assert stand_in.name not in keys, keys  # the seed's subset leaves the index out
    _index_written(cache, [name], folder, stand_in)

    again = cli_ok(*base, *PATCHPIX)  # HEAD: "made from another source (total: 7 vs 6)"
    assert f"entry │ {name} " in again and "resuming: 3 samples" in again, again
    assert [str(k) for k in DatasetEntry.open(str(cache), name).keys[:]] == keys


def test_the_other_split_of_a_val_fraction_pair_is_extracted(tmp_path: Path) -> None:
    folder, stand_in = _flat_with_stand_in(tmp_path)
    cache = tmp_path / "cache"
    base = ["extract", "--data", f"imagefolder:{folder}", "--cache", str(cache)]
    split = ["--val-fraction", "0.3", "--seed", "1"]
    train = _entry(cli_ok(*base, *split, *PATCHPIX))
    train_keys = {str(k) for k in DatasetEntry.open(str(cache), train).keys[:]}
    assert stand_in.name not in train_keys  # the index falls in the val split
    _index_written(cache, [train], folder, stand_in)

    out = cli_ok(*base, *split, "--split", "val", *PATCHPIX)  # HEAD: "would share 2 file(s)"
    val_keys = {str(k) for k in DatasetEntry.open(str(cache), _entry(out)).keys[:]}
    assert not val_keys & train_keys and INDEX in val_keys, (val_keys, train_keys)
    assert len(val_keys | train_keys) == 7  # every file of the listing of before, once
