"""`repackctl runs ls|info|rm`, `--json` listings, ids never cut, and missing-run hints.

One real pack run (patchpix encoder, 32 px, 4 steps) trained through the CLI is shared by the
module; tests that change runs work on a copy.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from rich.console import Console
from support.ckpt_state import write_state
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.cli.listing import print_listing

runner = CliRunner()
RUN = "pk-a-rather-long-run-name-for-the-width-tests-0001"  # 51 characters
ENTRY = "builtin-n48--train--32px"
SAMPLES = f"{RUN}--step-0000004--euler-8--cfg1--seed0"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with a patchpix entry, runs/ with one 4-step pack run, samples/ with one folder."""
    root = tmp_path_factory.mktemp("runs-cmd")
    roots = ["--cache", str(root / "cache"), "--runs", str(root / "runs")]
    res = runner.invoke(
        app, ["extract", "--encoder", "patchpix", "-n", "48", "--resolution", "32", *roots[:2]]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-c", "4", "--ch", "8",
         "--batch-size", "8", "--log-every", "2", "--image-every", "0", "--steps", "4",
         "--name", RUN, *roots],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (root / "samples" / SAMPLES).mkdir(parents=True)
    (root / "samples" / f"{RUN}x--step-0000004--euler-8--cfg1--seed0").mkdir()  # another run's
    (root / "runs" / "notes").mkdir()  # not a run
    (root / "runs" / "notes" / "todo.txt").write_text("keep me")
    return root


@pytest.fixture
def roots(base, tmp_path) -> Path:
    """A private copy of the module's folders."""
    for name in ("cache", "runs", "samples"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def _flags(root: Path) -> list[str]:
    return ["--runs", str(root / "runs")]


def _ok(args: list[str], **env: str):
    res = runner.invoke(app, args, env=env or None)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return res


@pytest.mark.parametrize("columns", ["80", "120"])
def test_ls_shows_full_ids_at_any_width(base, columns):
    res = _ok(["runs", "ls", *_flags(base)], COLUMNS=columns)
    line = next(ln for ln in res.output.splitlines() if ln.startswith(RUN))
    assert line.split()[:4] == [RUN, "pack", "4", "1"]  # name, stage, step, checkpoints
    assert "MB" in line and "…" not in res.output
    assert "notes" not in res.output  # a folder that is not a run is not listed
    res = _ok(["cache", "ls", "--cache", str(base / "cache")], COLUMNS=columns)
    assert ENTRY in res.output and "patchpix--final--32px--" in res.output
    assert "…" not in res.output


def test_ls_through_a_pipe_at_80_columns(base, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "repackctl", "runs", "ls", *_flags(base)],
        env=subprocess_env(tmp_path, COLUMNS="80"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert RUN in res.stdout and "…" not in res.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_tables_wrap_instead_of_cutting(width):
    buf = io.StringIO()
    out = Console(file=buf, width=width, force_terminal=True, color_system=None)
    rows = [[ENTRY, "48/48", 0, ["patchpix--final--32px--c1fa138fdb"], None, "0.4 MB"]]
    print_listing("cache", ["entry", "images", "skipped", "features", "latents", "size"], rows, out)
    text = buf.getvalue()
    assert ENTRY in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    if width == 120:
        assert "patchpix--final--32px--c1fa138fdb" in text


def test_ls_json(base):
    data = json.loads(_ok(["runs", "ls", "--json", *_flags(base)]).output)
    (run,) = data["runs"]
    assert run["name"] == RUN and run["stage"] == "pack" and run["imported"] is False
    assert run["step"] == 4 and run["checkpoints"] == 1 and run["bytes"] > 0
    cache = json.loads(_ok(["cache", "ls", "--json", "--cache", str(base / "cache")]).output)
    assert [e["name"] for e in cache["entries"]] == [ENTRY]
    info = json.loads(
        _ok(["cache", "info", ENTRY, "--json", "--cache", str(base / "cache")]).output
    )
    assert info["n"] == 48 and info["written"] == 48 and len(info["features"]) == 1


def test_info_shows_config_checkpoints_metrics_and_samples(base):
    args = ["runs", "info", RUN, *_flags(base), "--samples", str(base / "samples")]
    text = _ok(args, COLUMNS="80").output
    assert "config.steps" in text and "checkpoint step-0000004  complete" in text
    assert "metrics step 4" in text and "loss/total" in text
    assert SAMPLES in text and f"{RUN}x--" not in text
    data = json.loads(_ok([*args, "--json"]).output)
    assert data["config"]["steps"] == 4 and data["config"]["global_batch"] == 8
    assert [(c["name"], c["complete"]) for c in data["checkpoints"]] == [("step-0000004", True)]
    assert data["metrics_tail"][-1]["step"] == 4
    assert data["samples"] == [SAMPLES]


def test_info_flags_an_incomplete_checkpoint_and_an_imported_run(roots):
    run = roots / "runs" / RUN
    broken = run / "checkpoints" / "step-0000008"
    shutil.copytree(run / "checkpoints" / "step-0000004", broken)
    (broken / "optim.pt").unlink()
    state = json.loads((run / "checkpoints" / "step-0000004" / "state.json").read_text())
    imported = roots / "runs" / "imp-pack"
    shutil.copytree(run / "checkpoints", imported / "checkpoints")  # what `import official` makes
    state["imported"] = True
    write_state(imported / "checkpoints" / "step-0000004" / "state.json", state)
    shutil.rmtree(imported / "checkpoints" / "step-0000008")
    data = json.loads(_ok(["runs", "info", RUN, "--json", *_flags(roots)]).output)
    bad = [c for c in data["checkpoints"] if not c["complete"]]
    assert [c["name"] for c in bad] == ["step-0000008"] and "optim.pt" in bad[0]["problem"]
    assert data["step"] == 4  # the newest complete checkpoint
    listing = {r["name"]: r for r in json.loads(_ok(["runs", "ls", "--json", *_flags(roots)]).output)["runs"]}  # fmt: skip
    assert listing["imp-pack"]["stage"] == "pack" and listing["imp-pack"]["imported"] is True
    assert "pack (imported)" in _ok(["runs", "ls", *_flags(roots)]).output


def test_rm_asks_refuses_non_runs_and_deletes_with_yes(roots):
    runs = roots / "runs"
    res = runner.invoke(app, ["runs", "rm", "notes", "--yes", *_flags(roots)])
    assert res.exit_code == 7 and "not a repackctl run" in res.output
    assert RUN in res.output  # the hint lists the runs that exist
    assert (runs / "notes" / "todo.txt").read_text() == "keep me"
    res = runner.invoke(app, ["runs", "rm", "../cache", "--yes", *_flags(roots)])
    assert res.exit_code != 0 and (roots / "cache").is_dir()
    res = runner.invoke(app, ["runs", "rm", RUN, *_flags(roots)], input="n\n")
    assert res.exit_code == 1 and (runs / RUN).is_dir()
    _ok(["runs", "rm", RUN, "--yes", *_flags(roots)])
    assert not (runs / RUN).exists() and (runs / "notes").is_dir()
    assert "Traceback" not in res.output


def test_missing_run_errors_list_the_runs_that_exist(base):
    for args in (["sample", "--run", "nope", "-n", "4"], ["refine", "train", "--pack-run", "nope"]):
        res = runner.invoke(app, [*args, *_flags(base), "--cache", str(base / "cache")])
        assert res.exit_code != 0, res.output
        assert "Traceback" not in res.output
        assert "run 'nope'" in res.output or "checkpoint 'nope'" in res.output, res.output
        hint = res.output.split("Hint:")[1]
        assert RUN in hint and "(pack, step 4)" in hint, res.output


def test_training_writes_log_txt(base):
    log = (base / "runs" / RUN / "log.txt").read_text()
    assert "train 4/4 (100%)" in log and "done in" in log
    assert "0/?" not in log


@pytest.mark.slow
def test_a_killed_rm_is_finished_by_the_same_rm_and_keeps_training_out(roots):
    """`runs rm` killed while it deleted left a half-deleted folder that was no longer a run
    (config.json or state.json gone), so the same `runs rm` refused it: "not a repackctl run".
    Now the run is renamed to `.removing-<name>` first and deleted there; the rerun finishes it,
    and `runs ls` never lists the leftover."""
    runs = roots / "runs"
    cmd = [sys.executable, "-m", "repackctl", "runs", "rm", RUN, "--yes", *_flags(roots)]
    env = subprocess_env(roots, REPACKCTL_TEST_CRASH_AFTER="runs-rm")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 137, res.stdout + res.stderr
    leftover = runs / f".removing-{RUN}"
    assert not (runs / RUN).exists() and leftover.is_dir()
    (leftover / "config.json").unlink()  # as a deletion cut short leaves it
    assert RUN not in _ok(["runs", "ls", *_flags(roots)]).output
    res = _ok(["runs", "rm", RUN, "--yes", *_flags(roots)])
    assert "finishing the removal" in " ".join(res.output.split()), res.output
    assert not leftover.exists() and not (runs / RUN).exists()
    assert (runs / "notes" / "todo.txt").read_text() == "keep me"


def test_rm_holds_the_training_lock_while_it_moves_the_run_away(roots):
    """Between `runs rm`'s check and the deletion a training could start and write into a
    folder being deleted: the removal now takes the run's training lock for the rename, and a
    lock taken by someone else refuses it (nothing moves)."""
    import fcntl

    from repackctl.errors import CheckpointError
    from repackctl.runs import remove_run

    folder = roots / "runs" / RUN
    with open(folder / "train.lock", "a+b") as f:  # another open file: another holder
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CheckpointError, match="is being trained by another process"):
            remove_run(folder)
    assert folder.is_dir() and not (roots / "runs" / f".removing-{RUN}").exists()
    remove_run(folder)
    assert not folder.exists() and not (roots / "runs" / f".removing-{RUN}").exists()


def test_a_leftover_holding_a_file_of_yours_is_not_deleted(roots):
    """`runs rm NAME` finishes what a killed removal left in `.removing-NAME`; a folder of that
    name holding a file a run does not hold was not left by it, and stays."""
    runs = roots / "runs"
    leftover = runs / ".removing-gone"
    (leftover / "checkpoints").mkdir(parents=True)
    (leftover / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["runs", "rm", "gone", "--yes", *_flags(roots)])
    out = " ".join(res.output.split())
    assert res.exit_code == 7 and "Traceback" not in out, out
    assert "did not write" in out and "notes.txt" in out and "nothing was removed" in out, out
    assert (leftover / "notes.txt").read_text() == "mine"
