"""`refine train` on an entry of its training entry's name that holds other images.

A README-walk audit copied a refiner run and resumed it from another folder whose own cache held
the training entry's name extracted with ``--seed 1`` (other pixels, same name): it built
triplets from those images and resumed on them without a word (``pack encode`` refuses the
same entry). Now a resume, and a new refiner run of the pack model, on such an entry are refused
with ``Error:`` + ``Hint:`` before anything is written (the pack's check, ``cache.trained``); a
moved copy of the cache (same images) still resumes. The run records its cache root absolute: a
relative ``--cache`` was recorded as typed.

Real CLI runs on the shared patchpix stack (a private copy of its cache and runs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.ckpt_state import write_state
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files, snapshot
from support.stack import shared_stack

from repackctl.cache.store import DatasetEntry
from repackctl.refine.triplets import KIND
from repackctl.train.checkpoint import list_checkpoints, read_state

ENTRY = "builtin-n16--train--32px"
NEW = ["--pack-run", "pack-tiny", "--batch-size", "4", "--base-channels", "8", "--gan-weight"]
NEW += ["0", "--device", "cpu"]


@pytest.fixture
def work(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """``tmp_path/w`` holding a copy of the stack's cache and runs, the working folder, with a
    refiner run ``rf`` (1 step) trained there with ``--cache cache`` (relative)."""
    stack = shared_stack(tmp_path_factory)
    work = tmp_path / "w"
    shutil.copytree(stack["cache"], work / "cache")
    shutil.copytree(stack["runs"], work / "runs")
    monkeypatch.chdir(work)
    monkeypatch.setenv("REPACKCTL_RUNS", str(work / "runs"))
    cli_ok("refine", "train", *NEW, "--name", "rf", "--steps", "1", "--cache", "cache")
    return work


def _other_images(folder: Path) -> Path:
    """``folder/cache`` holding the stack's entry name extracted with another seed."""
    cli_ok("extract", "-e", "patchpix", "--resolution", "32", "-n", "16", "--chunk", "8",
           "--shard", "8", "--num-workers", "0", "--seed", "1",
           "--cache", str(folder / "cache"))  # fmt: skip
    assert DatasetEntry.open(str(folder / "cache"), ENTRY).attrs["source"]["seed"] == 1
    return folder / "cache"


def _runs(runs: Path) -> dict[str, bytes]:
    """The runs' files but the lock a refused command rewrites (released, not a change)."""
    return folder_files(runs, skip=("train.lock",))


def test_the_run_records_its_cache_root_absolute_and_the_images_source(work) -> None:
    cache = read_state(list_checkpoints(work / "runs" / "rf")[-1])["extra"]["cache"]
    assert cache["root"] == str(work / "cache")
    assert cache["entry"] == ENTRY and cache["source"]["seed"] == 0


def test_a_resume_from_another_folder_on_other_images_is_refused(work, monkeypatch) -> None:
    other = work.parent / "X"
    cache = _other_images(other)
    monkeypatch.chdir(other)
    runs = work / "runs"
    before, entry_before = _runs(runs), snapshot(cache)
    args = ("refine", "train", "--name", "rf", "--steps", "2", "--device", "cpu")
    out = cli_refused(6, *args, "--cache", "cache", "--runs", str(runs))
    assert f"cache entry {ENTRY} in {cache} holds other data than refiner run rf" in out, out
    assert "seed 1 here, 0 there" in out, out
    assert "pass the --cache the run was trained on" in out, out
    # nothing written: no triplets in the other cache, no log line or checkpoint in the run
    assert _runs(runs) == before and snapshot(cache) == entry_before
    assert KIND not in DatasetEntry.open(str(cache), ENTRY).group


def test_a_copied_run_without_the_record_is_refused_by_the_pack_check(work, monkeypatch) -> None:
    """A run of an older version recorded no source (and its root as typed): the pack model's
    record (the root it was trained in, which still holds its images) refuses it."""
    ckpt = list_checkpoints(work / "runs" / "rf")[-1]
    state = read_state(ckpt)
    assert state["extra"]["cache"]["source"]["seed"] == 0
    state["extra"]["cache"].pop("source")
    state["extra"]["cache"]["root"] = "cache"  # as typed
    write_state(ckpt / "state.json", state)
    other = work.parent / "X"
    cache = _other_images(other)
    monkeypatch.chdir(other)
    runs = work / "runs"
    before = _runs(runs)
    args = ("refine", "train", "--name", "rf", "--steps", "2", "--device", "cpu")
    out = cli_refused(6, *args, "--cache", "cache", "--runs", str(runs))
    assert "holds other data than pack run pack-tiny" in out, out
    assert "seed 1 here, 0 there" in out, out
    assert _runs(runs) == before
    assert KIND not in DatasetEntry.open(str(cache), ENTRY).group


def test_a_new_refiner_on_other_images_than_the_pack_models_is_refused(work) -> None:
    cache = _other_images(work.parent / "X")
    out = cli_refused(6, "refine", "train", *NEW, "--name", "rf-new", "--steps", "1",
                      "--cache", str(cache))  # fmt: skip
    assert "holds other data than pack run pack-tiny" in out, out
    assert "repackctl pack train --cache" in out, out
    assert not (work / "runs" / "rf-new").exists()
    assert KIND not in DatasetEntry.open(str(cache), ENTRY).group


def test_a_moved_copy_of_the_cache_still_resumes(work, monkeypatch) -> None:
    moved = work.parent / "moved"
    shutil.move(work / "cache", moved / "cache")
    monkeypatch.chdir(moved)
    cli_ok("refine", "train", "--name", "rf", "--steps", "2", "--device", "cpu",
           "--cache", "cache", "--runs", str(work / "runs"))  # fmt: skip
    ckpt = list_checkpoints(work / "runs" / "rf")[-1]
    assert ckpt.name == "step-0000002"
    assert read_state(ckpt)["extra"]["cache"]["root"] == str(moved / "cache")
