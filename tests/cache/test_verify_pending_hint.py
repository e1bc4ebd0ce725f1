"""`cache verify`'s command for pending refiner triplets, followed, finishes them.

A `refine train` killed while it built its triplets left rows pending, and `cache verify` (and
`cache ls`) said "the same `repackctl refine train`" writes them. Run as written (no --name)
that started refine-<newest pack run> with noise 0 and seed 0; with --name alone the run,
killed before it stored its settings, started afresh with those defaults too: either built
another triplets group and left these pending. Both now name `refine train --name RUN` with the
flags that pick this group (from its attributes: pack run, entry, noise, seed); followed, it
ends the pending state.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import one_torch_thread, subprocess_env
from support.caches import use_roots
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.crash import CRASH_ENV
from repackctl.errors import CacheError
from repackctl.refine.triplets import CRASH_BEFORE_DONE

# the killed run's training settings (it stored none: its command line is all there is)
TRAIN = ["--steps", "2", "--batch-size", "4", "--base-channels", "8", "--disc-channels", "8"]
TRAIN += ["--ckpt-every", "2", "--device", "cpu"]


def test_the_pending_triplets_command_resumes_the_killed_run_and_finishes_them(
    tmp_path_factory, tmp_path, monkeypatch
):
    root = use_roots(Path(shared_stack(tmp_path_factory)["runs"]).parent, tmp_path, monkeypatch)
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    runs_before = {p.name for p in (root / "runs").iterdir()}
    argv = ["refine", "train", "--pack-run", "pack-tiny", "--name", "rk", "--noise", "0.1"]
    argv += ["--seed", "5", *TRAIN]
    # killed while it builds its triplets: the first shard done, the second written, not marked
    env = subprocess_env(root, **{CRASH_ENV: f"{CRASH_BEFORE_DONE}8"})
    cmd = [sys.executable, "-m", "repackctl", *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr[-2000:]
    assert not (root / "runs" / "rk" / "config.json").exists()  # no settings stored yet

    out = cli_refused(CacheError.exit_code, "cache", "verify")
    assert "the same `repackctl refine train`" not in out, out
    pending = re.search(r"triplets/(\S+--noise0\.1): 8 samples pending \(`([^`]+)`", out)
    assert pending is not None, out
    group, again = pending.groups()
    assert again.startswith("repackctl refine train --name RUN --pack-run pack-tiny "), again
    assert "--noise 0.1 --seed 5" in again, again
    assert "(RUN: the refiner run that was building them, by default refine-pack-tiny)" in out
    listed = cli_ok("cache", "ls")
    assert f"finish with `{again}`" in listed, listed

    # followed, with the killed run's name (and its training settings): the rows get written
    with one_torch_thread():
        cli_ok(*shlex.split(again.replace("RUN", "rk"))[1:], *TRAIN)
    out = cli_ok("cache", "verify")
    assert "pending" not in out and ": ok" in out, out
    assert {p.name for p in (root / "runs").iterdir()} == runs_before | {"rk"}  # no other run
    assert group in (root / "runs" / "rk" / "log.txt").read_text()
