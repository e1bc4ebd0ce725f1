"""A real `repackctl` subprocess killed (SIGKILL) once it has written some of its sample PNGs:
the crash half of the crash/resume tests of sampling and evaluation; and the pid of a process
that has exited, for the temporaries a killed writer leaves."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_pngs(
    args: list[str], env: dict[str, str], out: Path, pngs: int = 2, poll: float = 0.02
) -> None:
    """Run ``python -m repackctl ARGS`` and SIGKILL it once ``out`` holds ``pngs`` sample PNGs
    (or it ended, or 90 s passed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "repackctl", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while time.time() < deadline and len(list(out.glob("0*.png"))) < pngs and proc.poll() is None:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def dead_pid() -> int:
    """The pid of a process that ran and has exited (reaped): no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
