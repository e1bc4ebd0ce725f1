"""An image folder's own caption index (`captions.jsonl`, `captions.csv`) is no skipped input.

`repackctl captions` reads a folder entry's captions from ``captions.jsonl`` (or ``.csv``) in
the image folder itself. Every `repackctl extract` of that folder then listed the file as a
skipped input ("skipped captions.jsonl: not in a class folder"); in a flat folder (no class
folders) it was even a row of the entry ("not an image", a black sample), so writing it after
the extract changed the entry and every later extract was refused "made from another source
(num: 7 vs 8)", its hint removing the entry. Other non-image files are still listed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok


def _captions(folder: Path, name: str) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    if name.endswith(".csv"):
        text = "file,caption\n" + "".join(f"{f},a photo\n" for f in files)
    else:
        text = "".join(json.dumps({"file": f, "caption": "a photo"}) + "\n" for f in files)
    (folder / name).write_text(text)


def _skipped(out: str) -> tuple[list[str], int]:
    lines = re.findall(r"skipped (\S+):", out)
    return lines, int(re.search(r"skipped inputs │ (\d+)", out)[1])


def test_class_folders_list_other_files_not_the_caption_index(tmp_path: Path) -> None:
    folder = random_image_folder(tmp_path / "pets")
    _captions(folder, "captions.jsonl")
    (folder / "notes.txt").write_text("not an image")
    base = ["extract", "--data", f"imagefolder:{folder}", "--cache", str(tmp_path / "cache")]
    out = cli_ok(*base, *PATCHPIX)
    assert _skipped(out) == (["notes.txt"], 1), out  # HEAD: captions.jsonl listed too (2)
    again = cli_ok(*base, *PATCHPIX)
    assert "resuming: 6 samples" in again and _skipped(again) == (["notes.txt"], 1), again


def _flat_folder(tmp_path: Path) -> Path:
    """A flat image folder (class folders' images side by side) with one non-image file."""
    classes = random_image_folder(tmp_path / "src")
    folder = tmp_path / "flat"
    folder.mkdir()
    for p in sorted(classes.rglob("*.png")):
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_flat_folder_written_its_captions_after_the_extract_resumes(tmp_path: Path) -> None:
    folder = _flat_folder(tmp_path)
    base = ["extract", "--data", f"imagefolder:{folder}", "--cache", str(tmp_path / "cache")]
    first = cli_ok(*base, *PATCHPIX)
    assert _skipped(first) == (["notes.txt"], 1), first
    for name in ("captions.jsonl", "captions.csv"):
        _captions(folder, name)
        out = cli_ok(*base, *PATCHPIX)  # HEAD: refused, "another source (num: 7 vs 8 …)"
        assert "resuming: 7 samples" in out and "written now │ 0 " in out, out
        assert _skipped(out) == (["notes.txt"], 1), out


def test_an_entry_that_holds_the_caption_index_as_a_row_is_still_extracted(
    tmp_path: Path,
) -> None:
    """A flat folder's entry extracted while its `captions.jsonl` was listed as a file (a
    skipped row: not an image) keeps its rows: a later extract (another encoder) writes into
    it rather than being refused as made from another source (num: 8 vs 7)."""
    from repackctl.cache.store import DatasetEntry

    folder = _flat_folder(tmp_path)
    # the listing of before: the index file was a row, listed in name order like any file
    stand_in = folder / "captions.jsonm"  # not an image, sorted where captions.jsonl is
    stand_in.write_text("not an image")
    cache = tmp_path / "cache"
    base = ["extract", "--data", f"imagefolder:{folder}", "--cache", str(cache)]
    entry_line = re.search(r"entry │ (\S+)", cli_ok(*base, *PATCHPIX))[1]
    entry = DatasetEntry.open(str(cache), entry_line)
    assert [str(k) for k in entry.keys[:2]] == ["captions.jsonm", "cat-0.png"]
    entry.keys[0] = "captions.jsonl"
    _captions(folder, "captions.jsonl")
    stand_in.unlink()

    other = PATCHPIX[:1] + ["builtin"] + PATCHPIX[2:]  # another encoder over the same entry
    out = cli_ok(*base, *other)  # without the old listing: "another source (num: 8 vs 7)"
    assert "written now │ 6 " in out and f"entry │ {entry_line} " in out, out
    assert DatasetEntry.open(str(cache), entry_line).n == 8
