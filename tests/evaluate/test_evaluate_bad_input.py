"""`evaluate fid | stats` refuse input that would score another image set, or fail after the work.

1. An empty reference, reference cache entry or stats source is not "the current folder" (which
   scored whatever images lay there) nor a traceback: one ``Error:`` with a ``Hint:``.
2. ``evaluate stats --num`` / ``--resolution`` below 1 are refused (they silently picked 11 of 16
   images, all of them, or the built-in defaults); not giving them still means the default.
3. An ``--out`` that cannot take ``metrics.json`` (a file where a folder is expected, a user's
   file that is not a metrics file) and a ``--stats-dir`` that is a file are refused before any
   scoring, and the user's file is left as it was.

Everything is real: PNG folders in tmp_path, a Zarr cache made by `repackctl extract`, the
built-in encoder's FD (``--fd-method cholesky``) through Typer's CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.cache.store import list_entries
from repackctl.evaluate.generative import read_stats_bundle

FD = ["--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu", *FD_WEIGHTS]
STATS = ["--extractor", "fd", "--device", "cpu", *FD_WEIGHTS]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _pngs(folder: Path, n: int, split: str = "train") -> Path:
    from repackctl.data.builtin import BuiltinSource

    folder.mkdir(parents=True, exist_ok=True)
    src = BuiltinSource(split=split, num=n, seed=1)
    for i in range(n):
        Image.fromarray(src.load(i, 32)).save(folder / f"{i:06d}.png")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- 1. empty strings
@pytest.mark.parametrize("flag,key", [("--ref", "reference"), ("--ref-cache", "ref_cache")])
def test_an_empty_reference_is_refused_not_the_current_folder(tmp_path, monkeypatch, flag, key):
    samples = _pngs(tmp_path / "samples", 6)
    here = _pngs(tmp_path / "here", 6, "val")  # images the old code took as the reference
    monkeypatch.chdir(here)
    before = _files(tmp_path)
    out = cli_refused(2, "evaluate", "fid", str(samples), flag, "", *FD)
    assert f"invalid setting evaluate.{key}: must not be empty" in out and "(from flag)" in out
    assert _files(tmp_path) == before  # no metrics.json, no cached reference statistics


def test_an_empty_stats_source_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(_pngs(tmp_path / "here", 6, "val"))
    before = _files(tmp_path)
    stats = ["--resolution", "32", "--stats-dir", str(tmp_path / "st"), *STATS]
    out = cli_refused(2, "evaluate", "stats", "", *stats)
    assert "SOURCE is an empty string" in out and "image folder" in out
    out = cli_refused(2, "evaluate", "stats", "--ref-cache", "", *stats)
    assert "invalid setting evaluate.ref_cache: must not be empty" in out
    assert _files(tmp_path) == before and not (tmp_path / "st").exists()


# --------------------------------------------------------------------------- 2. --num / --resolution
@pytest.mark.parametrize(
    "args,flag",
    [
        (["--num", "-3"], "--num -3"),
        (["--num", "0"], "--num 0"),
        (["--resolution", "0"], "--resolution 0"),
    ],
)
def test_stats_of_a_folder_refuse_num_or_resolution_below_one(tmp_path, args, flag):
    folder = _pngs(tmp_path / "ref", 8, "val")
    st = tmp_path / "st"
    out = cli_refused(2, "evaluate", "stats", str(folder), "--stats-dir", str(st), *STATS, *args)
    assert f"{flag} is not a positive number" in out and "leave it out for the default" in out
    assert not st.exists()


def test_stats_of_builtin_refuse_zero_instead_of_the_defaults(tmp_path):
    st = tmp_path / "st"
    out = cli_refused(2, "evaluate", "stats", "builtin", "--num", "0", "--resolution", "0",
                      "--stats-dir", str(st), *STATS)  # fmt: skip
    assert "--num 0 is not a positive number" in out and not st.exists()


def test_stats_of_a_cache_entry_refuse_num_below_one_and_not_given_means_all(tmp_path):
    photos = _pngs(tmp_path / "photos", 16, "val")
    cli_ok("extract", "-e", "patchpix", "--data", f"imagefolder:{photos}", "--resolution", "32")
    (entry,) = list_entries(str(tmp_path / "cache"))
    st = tmp_path / "st"
    stats = ["evaluate", "stats", "--ref-cache", entry, "--stats-dir", str(st), *STATS]
    for num in ("-5", "0"):
        out = cli_refused(2, *stats, "--num", num)
        assert f"--num {num} is not a positive number" in out
    assert not st.exists()
    cli_ok(*stats)  # not given: every written image of the entry
    (made,) = st.glob("*.npz")
    assert read_stats_bundle(made)["fd"].n == 16


def test_stats_refuse_a_resolution_or_weights_file_that_would_be_ignored(tmp_path):
    """A cache entry and an .npz are summarised at their own size: a --resolution other than
    theirs gave 32 px statistics for --resolution 64; --inception-weights does nothing for fd."""
    photos = _pngs(tmp_path / "photos", 8, "val")
    cli_ok("extract", "-e", "patchpix", "--data", f"imagefolder:{photos}", "--resolution", "32")
    (entry,) = list_entries(str(tmp_path / "cache"))
    st = tmp_path / "st"
    stats = ["evaluate", "stats", "--stats-dir", str(st), *STATS]
    out = cli_refused(2, *stats, "--ref-cache", entry, "--resolution", "64")
    assert "--resolution 64" in out and "32 px" in out, out
    cli_ok(*stats, "--ref-cache", entry, "--resolution", "32")  # their own size: fine
    images = tmp_path / "images.npz"
    np.savez(images, arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    out = cli_refused(2, *stats, str(images), "--resolution", "64")
    assert "--resolution 64" in out and "32 px" in out, out
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    out = cli_refused(2, *stats, "--ref-cache", entry, "--inception-weights", str(weights))
    assert "--extractor fd does not use Inception" in out, out


def test_stats_refuse_a_source_and_a_cache_entry_together(tmp_path):
    folder = _pngs(tmp_path / "ref", 4, "val")
    out = cli_refused(2, "evaluate", "stats", str(folder), "--ref-cache", "some-entry",
                      "--stats-dir", str(tmp_path / "st"), *STATS)  # fmt: skip
    assert "not both" in out and not (tmp_path / "st").exists()


# --------------------------------------------------------------------------- 3. --out, --stats-dir
@pytest.mark.parametrize("out", ["afile", "afile/scores.json", "mine.json"])
def test_an_out_that_cannot_take_metrics_is_refused_before_scoring(tmp_path, out):
    samples = _pngs(tmp_path / "samples", 6)
    (tmp_path / "afile").write_bytes(b"the user's own file\n")
    (tmp_path / "mine.json").write_text('{"user": "notes"}\n')
    st = tmp_path / "st"
    before = _files(tmp_path)
    res = cli_refused(2, "evaluate", "fid", str(samples), "--ref", "builtin",
                      "--out", str(tmp_path / out), "--stats-dir", str(st), *FD)  # fmt: skip
    assert "nothing was scored" in res and "--out" in res
    assert _files(tmp_path) == before  # the user's files as they were, no metrics anywhere
    assert not st.exists()  # no reference statistics computed before the refusal


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_foreign_metrics_json_beside_the_samples_is_left_alone(tmp_path, kind):
    samples = _pngs(tmp_path / "samples", 6)
    target = samples / "metrics.json"
    if kind == "file":
        target.write_text("my own notes, not scores\n")
    else:
        (target / "inside").mkdir(parents=True)
    st = tmp_path / "st"
    before = _files(tmp_path)
    res = cli_refused(2, "evaluate", "fid", str(samples), "--ref", "builtin",
                      "--stats-dir", str(st), *FD)  # fmt: skip
    assert "nothing was scored" in res and "pass --out" in res
    assert _files(tmp_path) == before and not st.exists()


def test_an_out_folder_or_a_previous_metrics_file_is_written(tmp_path):
    samples = _pngs(tmp_path / "samples", 6)
    folder = tmp_path / "scores.json"  # an existing folder is a folder, whatever its name
    folder.mkdir()
    common = ["evaluate", "fid", str(samples), "--ref", "builtin", *FD]
    cli_ok(*common, "--out", str(folder))
    first = json.loads((folder / "metrics.json").read_text())
    assert first["metrics"]["metrics"] == ["fd"]
    cli_ok(*common, "--out", str(folder / "metrics.json"))  # our own file: replaced
    again = json.loads((folder / "metrics.json").read_text())
    assert again["metrics"]["fd"] == pytest.approx(first["metrics"]["fd"])


def test_a_stats_dir_that_is_a_file_is_refused_before_computing(tmp_path):
    folder = _pngs(tmp_path / "ref", 4, "val")
    sfile = tmp_path / "sfile"
    sfile.write_bytes(b"not a folder\n")
    out = cli_refused(2, "evaluate", "stats", str(folder), "--resolution", "32",
                      "--stats-dir", str(sfile), *STATS)  # fmt: skip
    assert f"{sfile} is a file; nothing was computed" in out and "--stats-dir" in out
    assert sfile.read_bytes() == b"not a folder\n"


def test_inception_weights_where_no_metric_uses_them_are_refused(tmp_path):
    """`--inception-weights` (here a file that does not exist) with the built-in data's fd
    metric was ignored and the command exited 0."""
    samples = _pngs(tmp_path / "samples", 6)
    before = _files(tmp_path)
    out = cli_refused(2, "evaluate", "fid", str(samples), "--ref", "builtin", *FD,
                      "--inception-weights", str(tmp_path / "missing.pth"))  # fmt: skip
    assert "evaluate.inception_weights" in out and "do not use Inception" in out
    assert "drop --inception-weights" in out
    assert _files(tmp_path) == before
