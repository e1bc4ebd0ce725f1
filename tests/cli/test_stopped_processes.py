"""A command stopped from outside ends in one `Error:` with the rerun, never a raw traceback or
silence: a decode worker of `extract` killed (the OOM killer; torch raised a bare RuntimeError),
the process itself sent SIGTERM (torchrun sends it to every process of a job when one ended:
they died without a word), the quoted backend message of a lost peer cut mid-word by ``[:160]``.
And `sample --samples 100`, which wrote the default count into a new folder ``./100``
(``--samples`` is the samples root there, the count only in `evaluate fid`).

Real `python -m repackctl extract` subprocesses (patchpix, the built-in data) for the signals;
Typer's CliRunner for the messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_refused, raising_app
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.cli.common import (
    SIGTERM_EXIT,
    clip_words,
    sigterm_lines,
    worker_lost_error,
)

runner = CliRunner()
# torch's own messages (torch/csrc/DataLoader.cpp, utils/data/dataloader.py)
KILLED = "DataLoader worker (pid 10200) is killed by signal: Killed. "
BUS = (
    "DataLoader worker (pid 77) is killed by signal: Bus error. It is possible that "
    "dataloader's workers are out of shared memory. Please try to raise your shared memory limit."
)
EXITED = "DataLoader worker (pid(s) 5, 6) exited unexpectedly"
GLOO = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
    "[127.0.0.1]:42176: Connection reset by peer. This is typically caused by a remote process "
    "crashing or being killed; check the logs of the other processes of the job for the cause"
)
EXTRACT = ["extract", "--encoder", "patchpix", "-n", "600", "--shard", "32", "--chunk", "16"]
EXTRACT += ["--batch-size", "16"]


def _refused(message: str) -> str:
    res = runner.invoke(raising_app(RuntimeError(message)), [])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in out and out.count("Error:") == 1 and "Hint:" in out, out
    return out


def test_a_killed_decode_worker_is_an_error_with_the_rerun() -> None:
    out = _refused(KILLED)
    assert "worker process that decodes images was killed (pid 10200, signal: Killed)" in out
    assert "out-of-memory killer" in out
    assert "run the same command again: it resumes" in out
    assert "--num-workers 0" in out and "--batch-size" in out
    assert "/dev/shm" in _refused(BUS) and "out-of-memory" not in _refused(BUS)
    gone = _refused(EXITED)  # how it ended is not known: killed, most often
    assert "ended unexpectedly (pid 5, 6), most likely killed by the kernel's out-of" in gone
    crashed = _refused(EXITED.replace("(s) 5, 6", " 5") + " with exit code 1. Details are lost")
    assert "ended unexpectedly (pid 5, exit code 1)" in crashed and "out-of" not in crashed
    try:  # the thread's error raised from the SIGCHLD handler's: the signal is named
        try:
            raise RuntimeError(KILLED)
        except RuntimeError as inner:
            raise RuntimeError("DataLoader worker (pid(s) 10200) exited unexpectedly") from inner
    except RuntimeError as outer:
        told = worker_lost_error(outer)
    assert told is not None and "was killed (pid 10200, signal: Killed)" in told.message


def test_a_lost_peer_is_quoted_whole_words(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = _refused(GLOO)
    quoted = out.split("cannot go on (", 1)[1].split(") Hint:")[0]
    assert quoted.endswith("…") and GLOO.startswith(quoted[:-1]), quoted
    assert GLOO[len(quoted) - 1] == " " and len(quoted) <= 160, quoted  # cut at a space
    assert clip_words("short text") == "short text"
    assert clip_words("x" * 200) == "x" * 159 + "…"  # one long word: cut where it is


def test_sigterm_lines_under_a_launcher() -> None:
    message, hint = sigterm_lines(2, 1)
    assert "process 1" in message and "torchrun" in message and "every process" in hint
    message, hint = sigterm_lines(1, 0)
    assert "SIGTERM" in message and "torchrun" not in message and "resume" in hint


def test_a_number_as_samples_root_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    out = cli_refused(2, "sample", "-r", "d", "--samples", "100")
    assert "--samples 100 names the folder that holds sample sets" in out
    assert "evaluate fid" in out and "-n 100" in out and "--samples ./100" in out
    out = cli_refused(2, "runs", "info", "d", "--samples", "100")
    assert "--samples 100 names the folder" in out and "--samples ./100" in out
    assert not (tmp_path / "100").exists()
    for given in ("./100", "100x", "0"):  # not a count: refused for the missing run only
        assert "no run 'd'" in _no_run("sample", "-r", "d", "--samples", given)
    (tmp_path / "100").mkdir()  # a folder of that name: meant
    assert "no run 'd'" in _no_run("sample", "-r", "d", "--samples", "100")
    assert "runs/d does not exist" in _no_run("runs", "info", "d", "--samples", "100")


def _no_run(*args: str) -> str:
    """The output of a command refused for its missing run, and only for that."""
    res = runner.invoke(app, list(args))
    out = " ".join(res.output.split())
    assert res.exit_code != 0 and "names the folder" not in out, out
    return out


# installs the CLI's handling, checks what a forked child (a DataLoader worker) inherits, then
# runs one long C call that releases the GIL and is not interrupted by a signal, as a collective
# or a kernel: the Python-level handler alone would run only once it returned
BLOCKED = """
import hashlib, os, signal
from repackctl.cli.common import stop_on_sigterm
stop_on_sigterm()
pid = os.fork()
if pid == 0:
    plain = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.set_wakeup_fd(-1) == -1
    os.write(1, b"child: default\\n" if plain else b"child: handled\\n")
    os._exit(0)
os.waitpid(pid, 0)
print("ready", flush=True)
hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)
"""


def test_sigterm_ends_a_process_held_in_a_long_call_at_once(tmp_path) -> None:
    env = {**subprocess_env(tmp_path), "WORLD_SIZE": "2", "RANK": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == b"child: default\n"  # a worker ends as it did
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)  # in the long call
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took, err = time.monotonic() - sent, " ".join(err.decode().split())
    assert proc.returncode == SIGTERM_EXIT and took < 5, (took, err)
    assert err.count("Error:") == 1 and "Error: process 1 of this job's 2" in err, err
    assert "Hint: run the same command again, every process" in err and "Traceback" not in err


def _features(root: Path) -> dict[str, np.ndarray]:
    (name,) = list_entries(str(root))
    entry = DatasetEntry.open(str(root), name)
    feats = entry.features(entry.feature_ids()[0])
    return {
        "images": entry.images[:],
        "labels": entry.labels[:],
        "done": entry.done[:],
        "tokens": feats["tokens"][:],
        "cls": feats["cls"][:],
    }


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "repackctl", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: its workers are ended with it below
    )


def _wait_for(proc: subprocess.Popen, ready, what: str) -> None:  # noqa: ANN001
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"{what}: it ended first\n{proc.communicate()[1]}"
    assert ready(), what


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a thread that ended meanwhile
        return ""


def _ended(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_mid_extract_is_one_error_and_the_rerun_finishes_alike(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "ref" / "cache"))
    with one_torch_thread():  # the uninterrupted reference, one thread like the subprocess
        ref = runner.invoke(app, EXTRACT)
    assert ref.exit_code == 0, ref.output
    env = subprocess_env(tmp_path / "run")
    cache = tmp_path / "run" / "cache"
    proc = _start([*EXTRACT, "--num-workers", "2"], env)

    def chunks() -> bool:
        return len(list(cache.glob("*/features/*/done/c/*"))) >= 3

    _wait_for(proc, chunks, "no chunk written")
    proc.send_signal(signal.SIGTERM)
    code, err = _ended(proc)
    assert code == SIGTERM_EXIT and "Traceback" not in err, err
    assert err.count("Error:") == 1 and "Error: stopped by SIGTERM" in err, err
    assert "Hint: run the same command again to resume" in err, err
    rerun = subprocess.run(
        [sys.executable, "-m", "repackctl", *EXTRACT, "--num-workers", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0 and "already done" in rerun.stdout, rerun.stdout + rerun.stderr
    ref_arrays, run_arrays = _features(tmp_path / "ref" / "cache"), _features(cache)
    for key, value in ref_arrays.items():
        np.testing.assert_array_equal(value, run_arrays[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")
def test_a_decode_worker_killed_mid_extract_is_one_error(tmp_path) -> None:
    args = [*EXTRACT, "--num-workers", "2"]
    proc = _start([a if a != "600" else "3000" for a in args], subprocess_env(tmp_path))
    workers: list[int] = []

    def working() -> bool:
        # children of any of its threads (the loader forks from a thread of its own)
        lists = Path(f"/proc/{proc.pid}/task").glob("*/children")
        workers[:] = [int(p) for f in lists for p in _read(f).split()]
        return len(workers) >= 2 and any((tmp_path / "cache").glob("*/features/*/done/c/*"))

    _wait_for(proc, working, "no extract with 2 decode workers")
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    code, err = _ended(proc)
    assert code == 1 and "Traceback" not in err and err.count("Error:") == 1, err
    out = " ".join(err.split())  # torch names the signal, or only that the worker is gone
    assert f"(pid {workers[0]}" in out and "out-of-memory killer" in out, err
