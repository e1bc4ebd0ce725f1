"""Which cache entry a command uses: never a silently different one.

`pack train -n N` takes only the entry of that size; an image-folder subset or held-out split
records the seed (and fraction) that picked its files, so another seed or fraction is refused
instead of reusing or overlapping an entry; `-n` below 1 is refused; a resumed pack run keeps the
entry it was trained on after an unrelated extract. Real caches written by `repackctl extract`,
real PNG folders, real (tiny) training runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.data.imagefolder import ImageFolderSource
from repackctl.errors import CacheError, ConfigError
from repackctl.pack.data import locate_features
from repackctl.settings import resolve_settings

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "4", "--shard", "8"]
# a tiny pack model that names no data (so a bare `pack train` picks the newest features)
TINY = ["-c", "4", "--ch", "8", "--batch-size", "4", "--log-every", "1", "--image-every", "0"]


@pytest.fixture
def pets(tmp_path) -> Path:
    """3 classes × 6 random 40×48 RGB PNGs."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "fox"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(6):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "pets" / cls / f"{i}.png")
    return tmp_path / "pets"


def _ok(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def _error(code: int, *args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    return " ".join(res.output.split())  # rich wraps long lines


def test_pack_num_takes_only_the_entry_of_that_size(cache_root):
    _ok(*EXTRACT, "-n", "8")
    out = _error(CacheError.exit_code, "pack", "train", "--encoder", "patchpix",
                 "--resolution", "32", "-n", "12", "--steps", "1", *TINY)  # fmt: skip
    assert "builtin-n12--train--32px" in out and "builtin-n8--train--32px" in out
    assert "-n 12" in out and "drop -n" in out
    # without -n, the one entry of another size is still found
    flags = {"cache": cache_root, "pack.encoder": "patchpix", "pack.resolution": 32}
    ref = locate_features(resolve_settings(None, flags).settings)
    assert ref.entry.name == "builtin-n8--train--32px"


def test_folder_subset_records_its_seed(pets, cache_root):
    data = f"imagefolder:{pets}"
    _ok(*EXTRACT, "--data", data, "-n", "5", "--seed", "0")
    out = _error(CacheError.exit_code, *EXTRACT, "--data", data, "-n", "5", "--seed", "1")
    assert "made from another source" in out and "subset_seed: 0 vs 1" in out
    # the whole folder does not depend on the seed: its entry keeps matching
    _ok(*EXTRACT, "--data", data, "--seed", "0")
    assert "already done" in _ok(*EXTRACT, "--data", data, "--seed", "1")
    (full,) = [n for n in list_entries(cache_root) if "-n5" not in n]
    assert "subset_seed" not in DatasetEntry.open(cache_root, full).attrs["source"]


def test_held_out_split_must_match_the_other_split(pets, cache_root):
    data = ["--data", f"imagefolder:{pets}"]
    _ok(*EXTRACT, *data, "--val-fraction", "0.2", "--split", "train")
    out = _error(CacheError.exit_code, *EXTRACT, *data, "--val-fraction", "0.5",
                 "--split", "val", "--seed", "3")  # fmt: skip
    assert "--val-fraction 0.2 --seed 0" in out and "--val-fraction 0.5 --seed 3" in out
    assert [n.split("--")[1] for n in list_entries(cache_root)] == ["train"]  # nothing written
    _ok(*EXTRACT, *data, "--val-fraction", "0.2", "--split", "val")
    keys = {n.split("--")[1]: set(DatasetEntry.open(cache_root, n).keys[:])
            for n in list_entries(cache_root)}  # fmt: skip
    assert keys["train"].isdisjoint(keys["val"]) and len(keys["train"] | keys["val"]) == 18


def test_num_below_one_is_refused_for_folders(pets, cache_root):
    for num in ("-5", "0"):
        out = _error(ConfigError.exit_code, *EXTRACT, "--data", f"imagefolder:{pets}", "-n", num)
        assert "num" in out
    assert list_entries(cache_root) == []
    with pytest.raises(ConfigError, match="positive number"):
        ImageFolderSource(str(pets), num=0)


def test_resume_keeps_the_entry_it_was_trained_on(tmp_path, cache_root):
    _ok(*EXTRACT, "-n", "8")
    _ok("pack", "train", "--name", "p1", "--steps", "2", *TINY)
    _ok(*EXTRACT, "-n", "4")  # newer features, unrelated to the run
    out = _ok("pack", "train", "--name", "p1", "--steps", "3", *TINY)
    assert "builtin-n8--train--32px" in out
    state = sorted((tmp_path / "runs" / "p1" / "checkpoints").glob("step-*/state.json"))
    extra = [json.loads(p.read_text())["extra"] for p in state]
    assert [e["cache"]["entry"] for e in extra] == ["builtin-n8--train--32px"] * 2
    assert extra[0]["source"] == extra[1]["source"] and len(extra) == 2
