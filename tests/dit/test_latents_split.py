"""Without ``--entry``, `train dit`/`train t2i` take packed latents of a train-split entry only.

`pack encode` also writes latents for the val split (evaluation), often after the train split's;
the newest latents in the cache used to win, so a DiT could train on the val split without a
word. Real caches: the shared stack's train entry (patchpix, 32 px) + a val entry, both encoded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.dit.latents import find_latents
from repackctl.errors import DataError

runner = CliRunner()
CPU = ["--device", "cpu"]


def _ok(*args: str) -> None:
    with one_torch_thread():
        res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output


@pytest.fixture
def root(tmp_path_factory, tmp_path) -> Path:
    stack = shared_stack(tmp_path_factory)
    shutil.copytree(stack["cache"], tmp_path / "cache")
    shutil.copytree(stack["runs"], tmp_path / "runs")
    return tmp_path


def _encode(root: Path, *entry: str) -> None:
    _ok("pack", "encode", "--run", "pack-tiny", "--runs", str(root / "runs"),
        "--cache", str(root / "cache"), *entry, *CPU)  # fmt: skip


def _split_of(root: Path, name: str) -> str:
    return DatasetEntry.open(str(root / "cache"), name).attrs["split"]


@pytest.mark.slow
def test_newer_val_latents_never_replace_the_train_split(root):
    cache = str(root / "cache")
    (train,) = list_entries(cache)
    _encode(root)  # the train entry
    _ok("extract", "--encoder", "patchpix", "--resolution", "32", "-n", "8", "--split", "val",
        "--num-workers", "0", "--cache", cache, *CPU)  # fmt: skip
    val = next(e for e in list_entries(cache) if e != train)
    _encode(root, "--entry", val)  # newer than the train entry's latents
    assert DatasetEntry.open(cache, val).latent_ids()  # the premise: val holds latents too
    ref = find_latents(cache)
    assert ref.entry == train and _split_of(root, ref.entry) == "train"
    assert find_latents(cache, entry=val).entry == val  # on purpose, with --entry


@pytest.mark.slow
def test_only_val_latents_are_refused_without_entry(root):
    cache = str(root / "cache")
    (train,) = list_entries(cache)
    _ok("extract", "--encoder", "patchpix", "--resolution", "32", "-n", "8", "--split", "val",
        "--num-workers", "0", "--cache", cache, *CPU)  # fmt: skip
    val = next(e for e in list_entries(cache) if e != train)
    _encode(root, "--entry", val)
    with pytest.raises(DataError, match="no train-split entry") as err:
        find_latents(cache)
    assert val in str(err.value) and "--entry" in err.value.hint
    # the pack run that made them, not a placeholder to fill in
    assert "`repackctl pack encode --run pack-tiny`" in err.value.hint, err.value.hint
