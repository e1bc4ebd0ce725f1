"""A run folder holds only what repackctl wrote: `runs rm` and a new run leave the user's files alone.

`runs rm` refuses a run holding a file repackctl did not write (notes, a figure saved into a
checkpoint folder), naming it, and deletes nothing; what repackctl itself adds to a run
(``latent_stats.json`` of `pack encode`, `evaluate recon/probe` reports, temporaries) is removed
with it. A new run (`train dit`, `pack train`, the engine through the library) refuses a folder
of that name holding the user's files before writing anything, while a folder a killed start
left keeps working. The runs are real: extract → pack train → pack encode at toy size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import train_toy_script as toy
from support.caches import packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.train import train

DIT = ["train", "dit", "--size", "tiny", "--steps", "2", "-b", "8", "--log-every", "1"]
DIT += ["--image-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with a patchpix entry and its latents, runs/pk: a 4-step pack run (encoded)."""
    root = tmp_path_factory.mktemp("ownership")
    packed_cache(root / "cache", 32)
    return root


@pytest.fixture
def roots(base, tmp_path, monkeypatch) -> Path:
    """A private copy of the module's cache/ and runs/, set as this test's roots."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    return tmp_path


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- runs rm


def test_runs_rm_refuses_a_run_holding_the_users_files(roots):
    run = roots / "runs" / "pk"
    ckpt = run / "checkpoints" / "step-0000004"
    (run / "NOTES.md").write_text("what I tried")
    (ckpt / "my-figure.png").write_bytes(b"\x89PNG mine")
    before = _files(run)
    out = cli_refused(7, "runs", "rm", "pk", "--yes")
    assert "2 path(s) that repackctl did not write" in out and "nothing was removed" in out
    assert "NOTES.md" in out and "my-figure.png" in out
    assert _files(run) == before  # the run and the user's files, untouched
    # moved out, the run (with pack encode's latent_stats.json) is removable
    (run / "NOTES.md").unlink()
    (ckpt / "my-figure.png").unlink()
    assert (ckpt / "latent_stats.json").is_file()
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


def test_runs_rm_names_the_first_few_of_many_foreign_paths(roots):
    run = roots / "runs" / "pk"
    for i in range(7):
        (run / f"note-{i}.txt").write_text("mine")
    out = cli_refused(7, "runs", "rm", "pk", "--yes")
    assert "7 path(s)" in out and "and 2 more" in out
    assert len(list(run.glob("note-*.txt"))) == 7


def test_runs_rm_removes_what_repackctl_adds_to_a_run(roots):
    run = roots / "runs" / "pk"
    ckpt = run / "checkpoints" / "step-0000004"
    for name in ("recon-val.json", "recon-val.png", "probe-val.json"):  # evaluate recon / probe
        (ckpt / name).write_text("{}")
    (run / ".tmp-config.json.4242").write_text("{}")  # a killed atomic write
    (run / "checkpoints" / ".tmp-step-0000008-4242").mkdir()  # a killed checkpoint save
    (run / "checkpoints" / ".tmp-step-0000008-4242" / "model.safetensors").write_bytes(b"x")
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists()


# --------------------------------------------------------------------------- a new run


def _user_folder(roots: Path, name: str) -> Path:
    folder = roots / "runs" / name
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    (folder / "log.txt").write_text("user log\n")
    shutil.copy(roots / "runs" / "pk" / "curves.png", folder / "curves.png")
    return folder


def test_train_dit_refuses_a_folder_of_the_users_files(roots):
    folder = _user_folder(roots, "myproj")
    before = _files(folder)
    out = cli_refused(2, *DIT, "--name", "myproj")
    assert "already holds files that repackctl did not write" in out
    assert "notes.txt" in out and "curves.png" in out and "pass another --name" in out
    assert _files(folder) == before  # nothing written: no config, curves.png and log.txt as were
    cli_refused(7, "runs", "rm", "myproj", "--yes")  # and still not a run to remove
    assert _files(folder) == before


def test_pack_train_refuses_a_folder_of_the_users_files(roots):
    folder = _user_folder(roots, "mypack")
    before = _files(folder)
    pack = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "32"]
    out = cli_refused(2, *pack, "--steps", "2", "--batch-size", "8", "--ch", "16", "-c", "4",
                      "--image-every", "0", "--device", "cpu", "--name", "mypack")  # fmt: skip
    assert "already holds files that repackctl did not write" in out
    assert _files(folder) == before


def test_engine_refuses_a_folder_of_the_users_files(tmp_path):
    """Through the library (no CLI, no stage): the engine's own run-folder setup refuses."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    with pytest.raises(ConfigError, match="repackctl did not write"):
        train(toy.ToyTask(), toy.make_config(str(folder), steps=2, global_batch=8, cpu=True))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_folder_left_by_a_killed_start_trains(roots):
    folder = roots / "runs" / "started"
    folder.mkdir()
    (folder / "log.txt").write_text("2026-01-01 00:00:00 train 0/2\n")  # the stage's log lines
    (folder / ".tmp-config.json.4242").write_text("{")  # an atomic write cut short
    cli_ok(*DIT, "--name", "started")
    assert (folder / "config.json").is_file() and (folder / "checkpoints").is_dir()
    cli_ok(*DIT, "--name", "started", "--steps", "3")  # a started run resumes as before
    assert (folder / "checkpoints" / "step-0000003").is_dir()
