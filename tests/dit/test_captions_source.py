"""`repackctl captions` on an image folder: the caption index is one source however it is named.

The text group recorded `--captions` as typed and compared it on every rerun: a folder captioned
from its own `captions.jsonl` (no `--captions`) was recorded as "builtin", and the rerun the
README shows (`repackctl captions --captions captions.jsonl`), or the same file by its absolute
path, was refused with a hint to delete features encoded from exactly these captions. What was
encoded is compared caption by caption (`check_source`); the source is recorded resolved.
"""

from __future__ import annotations

import json
from pathlib import Path

import zarr
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import list_entries


def _captioned_folder(tmp_path: Path) -> tuple[Path, str]:
    """An image folder of 6 images with a captions.jsonl (2 captions each), extracted."""
    root = random_image_folder(tmp_path / "imgs")
    rows = [
        {"file": f"{cls}/{i}.png", "caption": f"a {cls} number {i} take {k}"}
        for cls in ("cat", "dog")
        for i in range(3)
        for k in range(2)
    ]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli_ok("extract", "--data", f"imagefolder:{root}", "--encoder", "patchpix",
           "--resolution", "32", "--chunk", "8", "--shard", "8", "--device", "cpu")  # fmt: skip
    (entry,) = list_entries(str(tmp_path / "cache"))
    return root, entry


def _text_attrs(tmp_path: Path, entry: str) -> dict:
    text = tmp_path / "cache" / entry / "text"
    (tid,) = [p.name for p in text.iterdir() if p.is_dir()]
    return dict(zarr.open_group(str(text / tid), mode="r").attrs)


def test_same_index_under_other_spellings_resumes(tmp_path: Path) -> None:
    root, entry = _captioned_folder(tmp_path)
    max_len = ["--max-length", "16", "--device", "cpu"]
    first = cli_ok("captions", "--entry", entry, *max_len)  # the folder's own captions.jsonl
    assert "written now │ 6" in first, first
    index = str((root / "captions.jsonl").resolve())
    assert _text_attrs(tmp_path, entry)["captions"] == index  # not "builtin"
    for spelling in ("captions.jsonl", index, "./captions.jsonl"):
        out = cli_ok("captions", "--captions", spelling, *max_len)
        assert "already done │ 6" in out, (spelling, out)
        assert _text_attrs(tmp_path, entry)["captions"] == index


def test_other_captions_still_refused(tmp_path: Path) -> None:
    root, entry = _captioned_folder(tmp_path)
    cli_ok("captions", "--entry", entry, "--max-length", "16", "--device", "cpu")
    edited = root / "edited.jsonl"
    text = (root / "captions.jsonl").read_text().replace("a dog number 2 take 1", "a puppy")
    edited.write_text(text)
    out = cli_refused(6, "captions", "--captions", "edited.jsonl", "--max-length", "16",
                      "--device", "cpu")  # fmt: skip
    assert "dog/2.png caption 1: was 'a dog number 2 take 1', now 'a puppy'" in out, out
    assert _text_attrs(tmp_path, entry)["captions"] == str((root / "captions.jsonl").resolve())


def test_relative_text_weights_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    """A relative `--text-weights` was recorded as typed (and compared): `train t2i` copied it
    into the run, whose `sample` found no weights outside the folder `captions` ran in, and the
    same folder by its absolute path was refused with a hint to delete the features."""
    import shutil

    from repackctl.encoders.text_minilm import extracted_folder

    _, entry = _captioned_folder(tmp_path)
    shutil.copytree(extracted_folder(), tmp_path / "mlm")
    monkeypatch.chdir(tmp_path)
    flags = ["--entry", entry, "--max-length", "16", "--device", "cpu"]
    cli_ok("captions", "--text-weights", "mlm", *flags)
    absolute = str((tmp_path / "mlm").resolve())
    attrs = _text_attrs(tmp_path, entry)
    assert attrs["text_weights"] == absolute and attrs["encoder_ref"] == "minilm"
    out = cli_ok("captions", "--text-weights", absolute, *flags)
    assert "already done │ 6" in out, out
    out = cli_ok("captions", "--text-encoder", "minilm:mlm", *flags)
    assert "already done │ 6" in out, out
    assert _text_attrs(tmp_path, entry)["encoder_ref"] == f"minilm:{absolute}"
