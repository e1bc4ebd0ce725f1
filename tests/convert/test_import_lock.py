"""Two `import official --out NAME` at once into one runs folder: the second is refused.

Each import looked for runs in place, converted into its own staging folder and renamed its runs
into place: the second found none of the first's runs (they were not placed yet), placed its own,
and the first then stopped with a traceback (``OSError: Directory not empty``) when it renamed
its run onto the second's (or the other way round). Now an import holds the lock of its --out
(``run_lock.hold_import_lock``) from its first look to its last rename, and a second one is
refused at once with an Error and a Hint naming the first's pid, writing nothing.

The first import is a real second process, held between converting stage 1 and placing its runs
by the progress bar it is given (the import's own code, paused at one of its steps).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import subprocess_env
from support.official import official_refiner, official_stage1
from support.snapshot import snapshot

PAUSED_IMPORT = """
import pathlib, sys, time
from contextlib import contextmanager
from repackctl.convert.official import import_official
runs, s1, s3, ready, go = sys.argv[1:]

class Bar:
    def advance(self, n=1, **fields):  # after stage 1 converted: wait for the test
        pathlib.Path(ready).write_text("converting")
        while not pathlib.Path(go).exists():
            time.sleep(0.01)
    def log(self, message):
        pass

@contextmanager
def progress(*args, **kwargs):
    yield Bar()

r = import_official(runs=runs, out="off", stage1=s1, refiner=s3, image_size=32, progress=progress)
print("placed", r.pack.parent.parent.name, r.refiner.parent.parent.name)
"""


def _cli_import(tmp_path: Path, s1: Path, s3: Path) -> subprocess.CompletedProcess:
    args = ["import", "official", "--stage1", str(s1), "--refiner", str(s3), "--out", "off"]
    cmd = [sys.executable, "-m", "repackctl", *args, "--image-size", "32"]
    return subprocess.run(
        cmd, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300
    )


def test_a_second_import_of_the_same_out_at_once_is_refused(tmp_path):
    s1, s3 = tmp_path / "s1.ckpt", tmp_path / "s3.ckpt"
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, s1)
    torch.save({"state_dict": official_refiner()}, s3)
    runs, ready, go = tmp_path / "runs", tmp_path / "ready", tmp_path / "go"
    cmd = [sys.executable, "-c", PAUSED_IMPORT, str(runs), str(s1), str(s3), str(ready), str(go)]
    first = subprocess.Popen(
        cmd, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        before = snapshot(runs)

        second = _cli_import(tmp_path, s1, s3)  # while the first converts
        said = second.stdout + second.stderr
        assert second.returncode == 2 and "Traceback" not in said, said
        assert "Error: another `repackctl import official --out off` is importing" in said, said
        assert f"(pid {first.pid}" in said and "Hint:" in said, said
        assert snapshot(runs) == before  # nothing placed, no staging folder of its own
    finally:
        go.write_text("")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and "placed off-pack off-refine" in out, err
    assert sorted(p.name for p in runs.glob("off-*")) == ["off-pack", "off-refine"]
    assert not list(runs.glob(".tmp-import-*")) and not list(runs.glob(".import-*"))

    # once the first has ended, the same command finds its runs equal to its import: kept
    again = _cli_import(tmp_path, s1, s3)
    assert again.returncode == 0 and "already in place" in again.stdout, again.stderr
