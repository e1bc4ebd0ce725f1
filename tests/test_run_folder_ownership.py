"""A run folder holds only what repackctl wrote: `runs rm` and a new run leave the user's files alone.

`runs rm` refuses a run holding a file repackctl did not write (notes, a figure saved into a
checkpoint folder), naming it, and deletes nothing; what repackctl itself adds to a run
(``latent_stats.json`` of `pack encode`, `evaluate recon/probe` reports, temporaries) is removed
with it. A new run (`train dit`, `pack train`, the engine through the library) refuses a folder
of that name holding the user's files before writing anything, while a folder a killed start
left keeps working. The runs are real: extract → pack train → pack encode at toy size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import train_toy_script as toy
from support.caches import shared_packed_cache, use_roots
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

from repackctl.errors import ConfigError
from repackctl.train import train

DIT = ["train", "dit", "--size", "tiny", "--steps", "2", "-b", "8", "--log-every", "1"]
DIT += ["--image-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with a patchpix entry and its latents, runs/pk: a 4-step pack run (encoded)."""
    root = tmp_path_factory.mktemp("ownership")
    shared_packed_cache(tmp_path_factory, root / "cache", 32)
    return root


@pytest.fixture
def roots(base, tmp_path, monkeypatch) -> Path:
    """A private copy of the module's cache/ and runs/, set as this test's roots."""
    return use_roots(base, tmp_path, monkeypatch)


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _report(ckpt: Path) -> str:
    """The part of an `evaluate recon` / `probe` report that tells it from a user's file of that
    name (``run_files._report_of``): its run and checkpoint."""
    return json.dumps({"run": "pk", "checkpoint": str(ckpt), "psnr": 20.0})


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
        (ckpt / name).write_text(_report(ckpt))
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


# --------------------------------------------------------------------------- exact ownership
# `runs rm` takes a file in a run for repackctl's only when repackctl writes exactly that file
# there: a checkpoint's weights are the files its ``state.json`` lists, a ``recon-<entry>.png``
# sits beside its ``recon-<entry>.json``, a temporary is a file named as repackctl's writers name
# theirs after a file of the run (``.tmp-config.json.<pid>``) or a checkpoint folder of the
# writer's (``checkpoints/.tmp-step-<step>-<pid>`` holding only what the writer puts there).
# Before, any ``*.pt`` in a checkpoint folder, any ``recon-*.png`` and any ``.tmp-*`` folder with
# everything in it were deleted with the run. What a kill at any instant leaves still goes with
# the run. The runs are real (extract → pack train → pack encode at toy size).

STEP = "step-0000004"  # the pack run's checkpoint (4 steps)


def _copy_checkpoint(ckpt: Path, to: Path, *, only_listed: bool = False) -> Path:
    """``ckpt`` copied to ``to``; ``only_listed``: only the files the writer writes (its
    weights, optimizer, state.json), as a checkpoint being written holds them."""
    to.mkdir()
    for p in ckpt.iterdir():
        if not only_listed or p.name.endswith((".safetensors", ".pt")) or p.name == "state.json":
            shutil.copy2(p, to / p.name)
    return to


def _kill_leftovers(run: Path) -> None:
    """What repackctl adds to a run, and what its writers killed at any instant leave there."""
    ckpts = run / "checkpoints"
    ckpt = ckpts / STEP
    (ckpt / "recon-val.json").write_text(_report(ckpt))  # evaluate recon: its report and grid
    (ckpt / "recon-val.png").write_bytes(b"png")
    (ckpt / ".recon-val-n8.png.4242.0123abcd.tmp").write_bytes(b"half")  # grid killed
    (ckpt / ".tmp-latent_stats.json.4242").write_text("{")  # pack encode killed
    written = _copy_checkpoint(ckpt, ckpts / ".tmp-step-0000008-4242", only_listed=True)
    (written / "state.json").unlink()  # killed before state.json (written last)
    (written / "optim.pt").unlink()
    _copy_checkpoint(ckpt, ckpts / ".tmp-step-0000012-4242", only_listed=True)  # at `written`
    _copy_checkpoint(ckpt, ckpts / f".tmp-old-{STEP}-4242")  # a re-save killed at `aside`
    pruned = _copy_checkpoint(ckpt, ckpts / ".tmp-pruned-step-0000002-4242")  # rotation killed
    (pruned / "state.json").unlink()  # its deletion had taken these
    (pruned / "recon-val.json").unlink()
    (run / ".tmp-config.json.4242").write_text("{")
    (run / ".tmp-curves.png").write_bytes(b"half")
    (run / "images").mkdir(exist_ok=True)
    (run / "images" / ".step-0000004.png.4242.0123abcd.tmp").write_bytes(b"half")


def test_runs_rm_refuses_files_that_only_look_like_repackctls(roots):
    run = roots / "runs" / "pk"
    ckpt = run / "checkpoints" / STEP
    assert (ckpt / "latent_stats.json").is_file()  # pack encode's: ours
    writing = run / "checkpoints" / ".tmp-step-0000008-4242"
    writing.mkdir()
    (writing / "model.safetensors").write_bytes(b"half")  # a save killed midway: ours
    mine = [
        ckpt / "my-notes.pt",  # a weights-like name that state.json does not list
        ckpt / "recon-mine.png",  # a figure without an `evaluate recon` report beside it
        run / ".tmp-backup",  # a folder named like a temporary, with everything in it
        writing / "notes.txt",  # a checkpoint's writer writes no such file
        run / ".tmp-notes.txt.4242",  # the temporary form of a file no run holds
    ]
    for p in mine[:2] + mine[3:]:
        p.write_text("mine")
    (run / ".tmp-backup").mkdir()
    (run / ".tmp-backup" / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(run)
    out = cli_refused(7, "runs", "rm", "pk", "--yes")
    assert "5 path(s) that repackctl did not write" in out and "nothing was removed" in out, out
    for p in mine:
        assert p.name in out, (p.name, out)
    assert "results.csv" not in out  # the folder is named, once
    assert snapshot(run) == before
    # moved out, the run goes with all that repackctl adds and a kill at any instant leaves
    for p in mine:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(writing)
    _kill_leftovers(run)
    cli_ok("runs", "rm", "pk", "--yes")
    assert not run.exists() and not (roots / "runs" / ".removing-pk").exists()


def test_a_killed_removals_rest_holding_unlisted_weights_is_not_deleted(roots):
    """The rest of a `runs rm` killed while it deleted (``.removing-<name>``) is checked by the
    same rules, less the metadata its deletion may have taken (a state.json, a report)."""
    runs = roots / "runs"
    rest = runs / ".removing-gone"
    shutil.copytree(runs / "pk", rest)
    (rest / "config.json").unlink()  # as a deletion cut short leaves it
    ckpt = rest / "checkpoints" / STEP
    (ckpt / "my-weights.pt").write_text("mine")
    before = snapshot(rest)
    out = cli_refused(7, "runs", "rm", "gone", "--yes")
    assert "my-weights.pt" in out and "nothing was removed" in out, out
    assert snapshot(rest) == before
    (ckpt / "my-weights.pt").unlink()
    (ckpt / "recon-val.png").write_bytes(b"png")  # its recon-val.json was deleted already
    (ckpt / "state.json").unlink()
    cli_ok("runs", "rm", "gone", "--yes")
    assert not rest.exists() and (runs / "pk").is_dir()


def test_a_new_run_refuses_a_folder_named_like_a_temporary_in_its_folder(roots):
    """A folder a start killed early left (its log, lock, the temporary of its first config.json)
    is trained in; one holding the user's ``.tmp-drafts/`` folder is not (it was)."""
    args = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "32"]
    args += ["--steps", "1", "--batch-size", "8", "--ch", "16", "-c", "4", "--image-every", "0"]
    args += ["--device", "cpu"]
    folder = roots / "runs" / "mine"
    (folder / ".tmp-drafts").mkdir(parents=True)
    (folder / ".tmp-drafts" / "notes.txt").write_text("mine")
    before = snapshot(folder)
    out = cli_refused(2, *args, "--name", "mine")
    assert "already holds files that repackctl did not write" in out and "notes.txt" in out, out
    assert snapshot(folder) == before
    killed = roots / "runs" / "killed"
    killed.mkdir()
    (killed / "log.txt").write_text("started\n")
    (killed / ".tmp-config.json.4242").write_text("{")
    cli_ok(*args, "--name", "killed")
    assert (killed / "checkpoints" / "step-0000001" / "state.json").is_file()
