"""`refine apply` under two processes: a refined PNG damaged in the share of rank 1 is refined
again, and the ``Warning:`` that names it reaches the user (rank 0 prints the warnings of every
process, ``DistInfo.all_items``).

Before, each process warned about its own share with ``warn``, which prints on rank 0 only: a
damaged PNG of rank 1's share was repaired without a word.

The shared toy stack (patchpix, 32 px, DiT ``dit-tiny``, refiner ``refine-audit3``); the
killed apply and the two workers are real processes (``support.launch.start_two``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.launch import start_two
from support.stack import stack_with_refiner

from repackctl.crash import CRASH_ENV
from repackctl.sample.refine import CRASH_AFTER_PNG

MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
CPU = ["--device", "cpu"]
REFINER = "refine-audit3"
N = 6  # rank 0 refines 000000-000002.png, rank 1 000003-000005.png


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "repackctl", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_a_damaged_png_of_another_process_is_warned_about(stack, tmp_path):
    env = subprocess_env(tmp_path, REPACKCTL_RUNS=stack["runs"], REPACKCTL_CACHE=stack["cache"])
    src = tmp_path / "s"
    done = _run(["sample", "-r", "dit-tiny", "-n", str(N), "--steps", "2", *CPU,
                 "--out", str(src)], env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    apply = ["refine", "apply", str(src), "--refiner", REFINER, "--batch-size", "3", *CPU]
    # killed once its last PNG is written: every PNG there, the folder unfinished
    done = _run(apply, {**env, CRASH_ENV: f"{CRASH_AFTER_PNG}{N - 1}"})
    assert done.returncode == 137, done.stderr[-2000:]
    out = tmp_path / f"s--{REFINER}"
    assert len(list(out.glob("0*.png"))) == N and not (out / "protocol.json").exists()
    png = out / "000004.png"  # in rank 1's share
    png.write_bytes(png.read_bytes()[:-20])

    code, stdout, stderr = start_two([MAIN, *apply], env).wait(timeout=180)
    assert code == 0, stderr[-2000:]
    rank0 = stderr.split("\n[rank 1] ")[0]
    assert f"Warning: {png} was changed after it was written: it is refined again" in rank0
    assert "6 (1 now, 5 already done)" in stdout, stdout
    assert (out / "protocol.json").is_file() and not (out / "latents").exists()
