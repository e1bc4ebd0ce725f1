"""One training process per run folder (``repackctl.run_lock``): a second training of a run that
another process trains is refused before it writes, ``runs rm`` and ``demo --fresh`` do not
delete it, a killed holder leaves no stale lock, and one process may take its lock again.

The holder is a real second process: a small script that takes the lock through the function the
stages use and waits for a file, or a real ``repackctl train dit`` (one end-to-end test).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

from repackctl.errors import CheckpointError, ConfigError
from repackctl.run_lock import LOCK_FILE, lock_holder, lock_run

N = 32
CPU = ["--device", "cpu", "--image-every", "0"]
DIT = ["train", "dit", "-b", "8", "--log-every", "1", *CPU]

HOLDER = """
import pathlib, sys, time
from repackctl.run_lock import lock_run, lock_samples
folder, ready, stop, kind = sys.argv[1:]
lock_run(folder, create=True) if kind == "run" else lock_samples(folder)
pathlib.Path(ready).write_text("locked")
while not pathlib.Path(stop).exists():
    time.sleep(0.01)
"""

ASK = """
import sys
from repackctl.run_lock import lock_holder
h = lock_holder(sys.argv[1])
print(h.pid if h else "free")
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with latents and runs/ with a pack run ``pk`` and a 2-step DiT run ``d``."""
    root = tmp_path_factory.mktemp("lock")
    shared_packed_cache(tmp_path_factory, root / "cache", N)
    with one_torch_thread():
        roots = ["--cache", str(root / "cache"), "--runs", str(root / "runs")]
        cli_ok(*DIT, "--steps", "2", "--name", "d", *roots)
    return root


@pytest.fixture
def roots(base, tmp_path) -> Path:
    """A private copy of cache/ and runs/ (REPACKCTL_CACHE / _RUNS point there)."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _wait_for(check, proc: subprocess.Popen, what: str) -> None:
    """Poll ``check`` until true; fail (with the process's stderr) if ``proc`` ends first."""
    deadline = time.monotonic() + 120
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"{what} never happened: {err[-2000:]}")
        time.sleep(0.01)


@contextmanager
def holder(folder: Path, tmp_path: Path, kind: str = "run") -> Iterator[subprocess.Popen]:
    """Another process holding the training lock of ``folder`` (``kind`` "samples": the writer
    lock of a samples folder) until the block ends."""
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    ready.unlink(missing_ok=True)
    stop.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", HOLDER, str(folder), str(ready), str(stop), kind]
    proc = subprocess.Popen(cmd, env=subprocess_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready.exists, proc, "the lock")
        yield proc
    finally:
        stop.write_text("")
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _asked_from_another_process(folder: Path, tmp_path: Path) -> str:
    """What ``lock_holder`` says about ``folder`` in a fresh process (this one is not it)."""
    cmd = [sys.executable, "-c", ASK, str(folder)]
    done = subprocess.run(cmd, env=subprocess_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --------------------------------------------------------------------------- training refused

STARTS = {
    "dit": [*DIT, "--steps", "4"],
    "t2i": ["train", "t2i", "-b", "8", "--steps", "4", *CPU],
    "pack": ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", str(N),
             "--steps", "4", "--batch-size", "8", "--ch", "16", "-c", "4", *CPU],
    "refine": ["refine", "train", "--pack-run", "pk", "--steps", "4", "--device", "cpu"],
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(STARTS))
def test_every_stage_refuses_a_run_another_process_trains(stage, roots):
    run = roots / "runs" / "busy"
    with holder(run, roots) as proc:
        before = snapshot(run)
        out = cli_refused(ConfigError.exit_code, *STARTS[stage], "--name", "busy")
        assert f"run {run} is being trained by another process (pid {proc.pid}, since" in out
        assert "nothing was written" in out and "pass another --name" in out
        assert snapshot(run) == before  # nothing written: no log, config, checkpoint


def test_a_resumed_run_is_refused_while_another_process_trains_it(roots):
    run = roots / "runs" / "d"
    with holder(run, roots) as proc:
        before = snapshot(run)
        out = cli_refused(ConfigError.exit_code, *DIT, "--steps", "4", "--name", "d")
        assert f"(pid {proc.pid}, since" in out
        assert snapshot(run) == before


def test_a_second_start_of_a_new_run_does_not_overwrite_what_the_first_wrote(roots, monkeypatch):
    """Two starts of one brand-new PCA run: this one found no folder (nothing to lock yet) and
    fits its PCA while the other start creates the folder, takes its lock and writes its
    pca.json. This one is refused before it writes there (it replaced the other's pca.json
    with its own fit, then the engine refused it as "nothing was written")."""
    from repackctl.pack import task

    run, real = roots / "runs" / "new", task.fit_token_pca
    others: list[subprocess.Popen] = []
    with ExitStack() as stack:

        def racing_fit(*args, **kwargs):
            fit = real(*args, **kwargs)
            others.append(stack.enter_context(holder(run, roots)))  # the other start
            (run / "pca.json").write_text('{"count": 1}')  # its fit
            return fit

        monkeypatch.setattr(task, "fit_token_pca", racing_fit)
        out = cli_refused(ConfigError.exit_code, *STARTS["pack"], "--method", "pca",
                          "--name", "new")  # fmt: skip
        assert f"is being trained by another process (pid {others[0].pid}, since" in out
        assert (run / "pca.json").read_text() == '{"count": 1}'
        assert sorted(p.name for p in run.iterdir()) == ["pca.json", LOCK_FILE]


def test_a_second_start_of_a_new_paper_run_neither_writes_nor_removes_sampling_json(tmp_path):
    """Two starts of one brand-new `train dit --preset paper` run: the other start made the
    folder and holds its lock, and has not written its sampling.json yet. This start is refused
    before it writes one (it passed the existence check beside the other, wrote the file, and
    on its refusal removed it: the other run then trained without its sampling settings)."""
    from repackctl.dit.run import official_sampling_file

    run = tmp_path / "runs" / "new"
    with holder(run, tmp_path) as proc:
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            with official_sampling_file(run, "paper"):
                pass
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
        (run / "sampling.json").write_text('{"theirs": 1}')  # the other start's file
        with pytest.raises(ConfigError), official_sampling_file(run, "paper"):
            pass
        assert (run / "sampling.json").read_text() == '{"theirs": 1}'


# --------------------------------------------------------------------------- deleting refused


def test_runs_rm_is_refused_while_the_run_is_trained_and_allowed_after(roots):
    run = roots / "runs" / "pk"
    with holder(run, roots) as proc:
        before = snapshot(run)
        for confirm in ([], ["--yes"]):  # refused before asking
            out = cli_refused(CheckpointError.exit_code, "runs", "rm", "pk", *confirm)
            assert f"is being trained by another process (pid {proc.pid}" in out
            assert "nothing was removed" in out and "Delete" not in out
        assert snapshot(run) == before
        assert "pk" in cli_ok("runs", "ls")  # the lock file is no file of the user's
    out = cli_ok("runs", "rm", "pk", "--yes")
    assert "removed" in out and not run.exists()


def test_demo_fresh_does_not_delete_a_run_being_trained(roots):
    from repackctl.pipeline import MARKER, claim_folder

    demo = roots / "demo"
    claim_folder(demo, "demo", ["d"], fresh=False)
    shutil.copytree(roots / "runs" / "d", demo / "d")
    with holder(demo / "d", roots) as proc:
        before = snapshot(demo)
        with pytest.raises(ConfigError) as e:
            claim_folder(demo, "demo", ["d"], fresh=True, log=lambda _: None)
        assert f"another process is training (pid {proc.pid}" in e.value.message
        assert "nothing was removed" in e.value.message
        assert snapshot(demo) == before
    claim_folder(demo, "demo", ["d"], fresh=True, log=lambda _: None)
    assert [p.name for p in demo.iterdir()] == [MARKER]


# --------------------------------------------------------------------------- no stale lock


def test_a_killed_holder_leaves_no_stale_lock(roots):
    run = roots / "runs" / "d"
    with holder(run, roots) as proc:
        proc.send_signal(signal.SIGKILL)  # as kill -9: nothing of the holder runs any more
        proc.wait(timeout=30)
        assert (run / LOCK_FILE).is_file()  # the file stays; its lock went with the process
        assert _asked_from_another_process(run, roots) == "free"
        out = cli_ok(*DIT, "--steps", "3", "--name", "d")
    assert "resumed at 2" in out
    assert json.loads((run / LOCK_FILE).read_text())["pid"] != proc.pid


def test_one_process_takes_its_lock_twice_and_again_after_the_folder_is_removed(tmp_path):
    import os

    run = tmp_path / "runs" / "twice"
    lock_run(run, create=True)
    first = (run / LOCK_FILE).read_bytes()
    assert json.loads(first)["pid"] == os.getpid()
    lock_run(run)  # the demo trains several stages in one process: no refusal, no rewrite
    assert (run / LOCK_FILE).read_bytes() == first
    assert lock_holder(run) is None  # this process is not "another process"
    assert _asked_from_another_process(run, tmp_path) == str(os.getpid())

    shutil.rmtree(run)  # e.g. `runs rm` in this process: the next start locks the new folder
    lock_run(run, create=True)
    assert _asked_from_another_process(run, tmp_path) == str(os.getpid())


def test_a_training_in_this_process_frees_the_run_when_it_ends(roots):
    """A Python session (a notebook, the demo) that trained a run in-process keeps no lock on it:
    another process may train or remove it at once (the lock lived until the session ended)."""
    import os

    run = roots / "runs" / "d"
    cli_ok(*DIT, "--steps", "3", "--name", "d")  # resumes 2 → 3 in this process
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()  # it held the lock
    assert _asked_from_another_process(run, roots) == "free"
    # a stage that ends without training (its run is at --steps already) frees it too
    cli_ok(*DIT, "--steps", "3", "--name", "d")
    assert _asked_from_another_process(run, roots) == "free"


RANK1 = """
import pathlib, sys
from repackctl.settings import resolve_settings
from repackctl.settings.resume import resume_settings
resolved = resolve_settings(flags={"dit.name": "d"}, environ={})
resume_settings(pathlib.Path(sys.argv[1]), resolved.settings, None, "dit")
print("resumed")
"""


def test_the_other_ranks_of_the_job_that_holds_the_lock_are_not_refused(roots, tmp_path):
    """Rank 1 of a job checks the run while rank 0 holds its lock: it is the same job (an
    exclusive try-lock on every rank refused it, naming rank 0's pid)."""
    run = roots / "runs" / "d"
    with holder(run, tmp_path):
        env = subprocess_env(roots, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2")
        cmd = [sys.executable, "-c", RANK1, str(run)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "resumed"


# --------------------------------------------------------------------------- end to end


def _lines(path: Path) -> int:
    """Whole lines of ``path`` so far (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.mark.slow
def test_a_second_train_dit_is_refused_while_the_first_trains(roots):
    """A real `repackctl train dit` in a subprocess; the same command again is refused and
    writes nothing (one banner in log.txt, steps in order in metrics.jsonl)."""
    run = roots / "runs" / "e2e"
    args = [*DIT, "--steps", "1000000", "--ckpt-every", "1000000", "--name", "e2e"]
    cmd = [sys.executable, "-m", "repackctl", *args]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(roots), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    def locked_by_it() -> bool:
        try:
            return json.loads((run / LOCK_FILE).read_text())["pid"] == proc.pid
        except (OSError, ValueError, KeyError):
            return False

    try:
        _wait_for(locked_by_it, proc, "the first training's lock")
        # two whole lines: the kill below may cut the last one, the check reads the others
        _wait_for(lambda: _lines(run / "metrics.jsonl") >= 2, proc, "two logged steps")
        out = cli_refused(ConfigError.exit_code, *args)
        assert f"run {run} is being trained by another process (pid {proc.pid}" in out
        assert proc.poll() is None  # the first one trains on
    finally:
        proc.kill()
        proc.wait()
    banners = [ln for ln in (run / "log.txt").read_text().splitlines() if "world 1 ·" in ln]
    assert len(banners) == 1  # only the first training started
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(ln)["step"] for ln in lines[:-1]]  # the last one may be cut by the kill
    assert steps and steps == sorted(set(steps))


# --------------------------------------------------------------------------- samples folders


def test_a_second_sample_into_a_folder_being_written_is_refused(roots):
    """Two `sample` processes on one folder (the same command twice, two jobs of a sweep with
    one derived folder name) each checked the other's files against their own records: one
    stopped with "000000.png was damaged after it was written". The second is refused before it
    writes, naming the writer; the folder is free again once a sample command ends."""
    out_dir = roots / "samples" / "s"
    out_dir.mkdir(parents=True)
    sample = ["sample", "-r", "d", "-n", "4", "--steps", "2", "--device", "cpu"]
    with holder(out_dir, roots, "samples") as proc:
        out = cli_refused(ConfigError.exit_code, *sample, "--out", str(out_dir))
        assert (
            f"samples folder {out_dir} is being written by another process (pid {proc.pid}" in out
        )
        assert sorted(p.name for p in out_dir.iterdir()) == [".sample.lock"]  # nothing written
    cli_ok(*sample, "--out", str(out_dir))
    assert (out_dir / "samples.npz").is_file()
    with holder(out_dir, roots, "samples"):  # the in-process sample gave its lock up
        pass
