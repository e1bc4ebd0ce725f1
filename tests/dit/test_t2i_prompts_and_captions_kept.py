"""Prompts and captions reach the model as given, or the command refuses.

Found by an audit of the text-to-image path:
- an empty ``--prompt`` was dropped, so every later prompt went to another sample;
- a ``--prompts`` line holding U+2028 (or NEL, a form feed) became two prompts;
- a caption group removed and encoded again under the same id from edited captions let a
  resumed `train t2i` train on the new captions without a word;
- an image with 256 captions crashed `captions` with a traceback (uint8 count), after creating
  half a group;
- `captions --seed / --num-workers` and `sample --num-workers` were offered and read nowhere.

A real toy stack (tests/support/caches.py ``t2i_stack``) and real PNG folders in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.captions_cache import TEXT_KIND
from repackctl.cli.app import app
from repackctl.errors import CheckpointError, ConfigError, DataError

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "-n", "2", "--steps", "2", *CPU]
TRAIN = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2", "--image-every", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-kept") / "w", 32, 8)


def test_an_empty_prompt_is_refused_not_dropped(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    out = cli_refused(ConfigError.exit_code, *SAMPLE, "--prompt", "", "--prompt", "a red star")
    assert "--prompt number 1 of 2 is empty" in out, out
    assert not (tmp_path / "w" / "samples").exists()  # before: both samples of "a red star"


def test_a_prompts_line_is_one_prompt_whatever_unicode_it_holds(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red star\u2028on a blue background\r\na green disc\x0c now\n\n")
    out = tmp_path / "out"
    cli_ok(*SAMPLE, "--prompts", str(prompts), "--out", str(out))
    written = (out / "prompts.txt").read_text().splitlines()
    assert written == ["a red star on a blue background", "a green disc now"], written


def test_resuming_on_captions_encoded_again_from_others_is_refused(stack, tmp_path, monkeypatch):
    work = use_stack(stack, tmp_path, monkeypatch)
    cli_ok(*TRAIN, "--steps", "2", "--name", "tB", *CPU)
    (train,) = [n for n in list_entries(str(work / "cache")) if "--train--" in n]
    ds = DatasetEntry.open(str(work / "cache"), train)
    (tid,) = ds.text_ids()
    # as `cache rm --text` and `captions` from an edited index leave it: same id, other captions
    where = Path(str(ds.group.store.root)) / ds.group[TEXT_KIND][tid].path
    group = zarr.open_group(str(where), mode="r+")
    group.attrs["captions_sha256"] = "0" * 64
    out = cli_refused(CheckpointError.exit_code, *TRAIN, "--steps", "4", "--name", "tB", *CPU)
    assert "other captions than this run was trained on" in out, out


def test_more_captions_than_the_cache_keeps_is_refused_before_writing(tmp_path):
    data, cache = tmp_path / "imgs", tmp_path / "cache"
    (data / "cat").mkdir(parents=True)
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (36, 36, 3), np.uint8)
        Image.fromarray(pixels).save(data / "cat" / f"cat_00{i}.png")
    rows = [{"file": "cat/cat_000.png", "caption": f"a cat number {i}"} for i in range(256)]
    index = data / "captions.jsonl"
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extract = ["extract", "--encoder", "patchpix", "--resolution", "32", "--num-workers", "0"]
    cli_ok(*extract, "--data", f"imagefolder:{data}", "--cache", str(cache), *CPU)
    args = ["captions", "--captions", str(index), "--max-length", "8", "--cache", str(cache)]
    out = cli_refused(DataError.exit_code, *args, *CPU)
    assert "more than 255 captions" in out and "cat/cat_000.png (256)" in out, out
    (entry,) = list_entries(str(cache))
    assert DatasetEntry.open(str(cache), entry).group.get(TEXT_KIND) is None  # nothing made


@pytest.mark.parametrize(
    "command,option",
    [("captions", "--seed"), ("captions", "--num-workers"), ("sample", "--num-workers")],
)
def test_options_read_nowhere_are_not_offered(command, option):
    res = CliRunner().invoke(app, [command, option, "1"])
    assert res.exit_code == 2 and "No such option" in res.output, res.output
