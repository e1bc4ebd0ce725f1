"""`repackctl captions --text-encoder NAME:PATH --text-weights OTHER`: the encoder loads PATH, so
OTHER did nothing while the text group recorded it as the weights folder of its features (and
`sample` of a run trained on them then looked for OTHER). Refused before anything is written;
the same folder named twice is accepted.

Real components: `extract` (patchpix, 32 px) and `captions` (the built-in MiniLM, from a copy of
its extracted folder) through the CLI on a real Zarr cache in a temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.encoders.text_minilm import extracted_folder

CPU = ["--device", "cpu"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_second_weights_folder_is_refused_not_recorded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", "8"]
    cli_ok(*extract, "--num-workers", "0", "--cache", str(cache), *CPU)
    (entry,) = list_entries(str(cache))
    mini = tmp_path / "minilm"
    shutil.copytree(extracted_folder(), mini)
    other = tmp_path / "another-folder"  # a path the features would never come from
    args = ["captions", "--entry", entry, "--max-length", "8", "--cache", str(cache), *CPU]
    args += ["--text-encoder", f"minilm:{mini}"]

    out = cli_refused(2, *args, "--text-weights", str(other))
    assert f"--text-weights another, {other}" in out and "ignored" in out, out
    assert f"--text-encoder minilm --text-weights {mini}" in out, out
    assert DatasetEntry.open(str(cache), entry).text_ids() == []  # nothing written

    # the same folder twice (another spelling) is no conflict: encoded from it, recorded so
    cli_ok(*args, "--text-weights", f"{mini}/")
    ds = DatasetEntry.open(str(cache), entry)
    (tid,) = ds.text_ids()
    attrs = dict(ds.group["text"][tid].attrs)
    assert attrs["encoder_ref"] == f"minilm:{mini}" and attrs["text_weights"] == str(mini)
