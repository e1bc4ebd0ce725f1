"""Loose ends of finished and unfinished samples folders, with real processes.

1. `sample --out <an unfinished refine apply folder>` (a `refine apply` killed half way) was
   refused with a generic hint, `refine apply SAMPLES --refiner RUN`: the folder records its
   source and refiner only by their sha256 until it is finished. Its name gives the samples
   folder beside it and the refiner run, checked against the recorded sha256: the hint is now
   the exact command, and that command finishes the folder.
2. Two identical `sample` commands on a finished folder whose grid must be redrawn (`sample
   --refiner R --grid N` on a finished `refine apply` folder, or `sample --grid N` on its own
   folder): both answer "already done", but the second was refused ("being written by another
   process") while the first held the folder's lock. It now waits for the lock (bounded, said
   on stderr); in the refined folder, finding the grid drawn by the first, it draws nothing.

The shared toy stack with a 32 px refiner (tests/support/stack.py); real CLI calls, a real
killed process (``REPACKCTL_TEST_CRASH_AFTER``) and two real `sample` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.cli import cli_ok, cli_refused
from support.stack import refiner_env

from repackctl.crash import CRASH_ENV
from repackctl.errors import ConfigError
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.sample.refine import CRASH_AFTER_PNG

REFINER = "refine-s31"
CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", *CPU]

env = refiner_env(REFINER)


def _run(args: list[str], **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "repackctl", *args]
    return subprocess.run(
        cmd, env={**os.environ, **extra}, capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------- 1. an unfinished apply folder
def test_sample_into_a_killed_refine_apply_folder_names_the_command_that_finishes_it(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--out", str(src))
    killed = _run(
        ["refine", "apply", str(src), "--refiner", REFINER, *CPU],
        **{CRASH_ENV: f"{CRASH_AFTER_PNG}1"},
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    assert (refined / SETTINGS_JSON).is_file() and not (refined / PROTOCOL_JSON).is_file()
    before = sorted(p.name for p in refined.iterdir())

    out = cli_refused(ConfigError.exit_code, *SAMPLE, "--out", str(refined))
    finish = f"repackctl refine apply {src} --refiner {REFINER}"
    assert "is an unfinished folder of `repackctl refine apply`" in out, out
    assert f"Hint: finish it with `{finish}`" in out, out
    assert sorted(p.name for p in refined.iterdir()) == before  # nothing in it was changed

    cli_ok(*finish.split()[1:], *CPU)  # the command named finishes it
    card = json.loads((refined / PROTOCOL_JSON).read_text())
    assert card["refined_from"] == str(src) and card["num_samples"] == 4


# ----------------------------------------------------------- 2. two "already done" regrids
HOLD_THEN_SAMPLE = """
import sys
from repackctl.cli.app import app
from repackctl.run_lock import lock_samples
lock_samples(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
sys.argv = ["repackctl", *sys.argv[2:]]
app()
"""


def _two_at_once(folder: Path, args: list[str]) -> tuple[str, int, bytes]:
    """Two `repackctl ARGS` processes on the finished ``folder``: the first holds the folder's
    lock (as from its first write to its end) until the second says it waits for it, then
    runs ARGS; both must succeed. (the second's output, grid.png's mtime and the card the
    first left)."""
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_SAMPLE, str(folder), *args],
        env=dict(os.environ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        assert first.stdout.readline().strip() == "locked", first.stderr.read()
        cmd = [sys.executable, "-m", "repackctl", *args]
        second = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        said = ""
        while "waiting up to" not in said:  # it waits for the first, and says so
            line = second.stderr.readline()
            assert line, f"the second ended without waiting: {said}"
            said += line
        assert f"is being written by another process (pid {first.pid}" in said, said
        first.stdin.write("go\n")
        first.stdin.close()
        assert first.wait(timeout=300) == 0, first.stderr.read()
        drawn = (folder / "grid.png").stat().st_mtime_ns
        card = (folder / PROTOCOL_JSON).read_bytes()
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, said + out + err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return " ".join(out.split()), drawn, card


def test_two_identical_samples_that_redraw_a_refined_grid_both_succeed(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(src))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)
    four = (refined / "grid.png").read_bytes()
    again = [*SAMPLE, "--refiner", REFINER, "--out", str(refined), "--grid", "2"]

    out, drawn, card = _two_at_once(refined, again)
    assert "already" in out, out
    assert (refined / "grid.png").read_bytes() != four  # the grid of 2, drawn once
    assert (refined / "grid.png").stat().st_mtime_ns == drawn  # not again by the second
    assert (refined / PROTOCOL_JSON).read_bytes() == card
    assert json.loads(card)["grid"] == 2 and "grid_pending" not in json.loads(card)


def test_two_identical_samples_on_a_finished_folder_both_succeed(env, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(folder))
    four = (folder / "grid.png").read_bytes()

    out, _, card = _two_at_once(folder, [*SAMPLE, "--grid", "2", "--out", str(folder)])
    assert "already" in out, out
    grid = (folder / "grid.png").read_bytes()
    assert grid != four and json.loads(card)["grid"] == 2
    assert (folder / PROTOCOL_JSON).read_bytes() == card  # the second left what the first made
