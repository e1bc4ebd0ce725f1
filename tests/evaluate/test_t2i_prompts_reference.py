"""`evaluate fid`'s default reference of text-to-image samples of the default prompts is the
entry whose first captions were their prompts, found by content: `sample` read them from the
cache setting (which holds the run's training entry), so an entry of the same name in the root
the checkpoint recorded, made again with other images, is not the one they describe. It was
taken by name; now the entry whose first captions are the samples' prompts is, and when no
cache holds one, the run's training entry with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import t2i_stack, use_stack
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]
VAL, TRAIN = "builtin-n8--val--32px", "builtin-n32--train--32px"
SCORE = ["--metrics", "fd", "--fd-weights", "random", "--fd-method", "cholesky", *CPU]


def _remake_val(cache: Path) -> None:
    """Entry VAL of ``cache`` made again, of other images (another seed), with captions."""
    at = ["--cache", str(cache), *CPU]
    cli_ok("cache", "rm", VAL, "--yes", "--cache", str(cache))
    cli_ok("extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "8",
           "--shard", "16", "-n", "8", "--split", "val", "--seed", "7", *at)  # fmt: skip
    cli_ok("captions", "--entry", VAL, "--max-length", "8", *at)


def _reference(metrics: Path) -> dict:
    return json.loads(metrics.read_text())["metrics"]["reference"]


def test_default_prompts_reference_is_the_entry_holding_their_captions(tmp_path, monkeypatch):
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    recorded = t2i_stack(tmp_path / "base") / "cache"  # the root the run's checkpoint names
    work = use_stack(recorded.parent, tmp_path, monkeypatch)  # REPACKCTL_CACHE: a copy
    folder = work / "s"
    cli_ok("sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "8", *CPU,
           "--out", str(folder))  # fmt: skip
    card = json.loads((folder / "protocol.json").read_text())
    assert card["prompt_entry"] == VAL  # read from the copy, the cache setting
    _remake_val(recorded)  # the recorded root's entry of that name: other images

    said = cli_ok("evaluate", "fid", str(folder), *SCORE)
    cli_ok("evaluate", "fid", str(folder), "--ref-cache", VAL, *SCORE, "--out", str(work / "o"))
    assert _reference(folder / "metrics.json") == _reference(work / "o" / "metrics.json")
    assert f"prompts are the first captions of {VAL}" in said

    _remake_val(work / "cache")  # now no cache holds the entry the prompts were read from
    said = cli_ok("evaluate", "fid", str(folder), *SCORE, "--out", str(work / "t"))
    assert "has other first captions" in said and f"training entry {TRAIN}" in said, said
    assert _reference(work / "t" / "metrics.json")["path"] == f"cache:{TRAIN}"
