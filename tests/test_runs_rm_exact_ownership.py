"""`runs rm` takes a file in a run for repackctl's only when repackctl writes exactly that file
there: a checkpoint's weights are the files its ``state.json`` lists, a ``recon-<entry>.png``
sits beside its ``recon-<entry>.json``, a temporary is a file named as repackctl's writers name
theirs after a file of the run (``.tmp-config.json.<pid>``) or a checkpoint folder of the
writer's (``checkpoints/.tmp-step-<step>-<pid>`` holding only what the writer puts there).
Before, any ``*.pt`` in a checkpoint folder, any ``recon-*.png`` and any ``.tmp-*`` folder with
everything in it were deleted with the run. What a kill at any instant leaves still goes with
the run. The runs are real (extract → pack train → pack encode at toy size).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.caches import packed_cache
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

STEP = "step-0000004"  # the pack run's checkpoint (4 steps)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with a patchpix entry and its latents, runs/pk: a 4-step pack run (encoded)."""
    root = tmp_path_factory.mktemp("exact")
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
    (ckpt / "recon-val.json").write_text("{}")  # evaluate recon: its report and grid
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
