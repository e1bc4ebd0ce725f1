"""`benchmarks/bench_train_step.py --variants mmdit-tiny`: a text-conditioned variant (the
`train t2i` step, as `repackctl benchmark train --model mmdit-tiny` times it) is timed beside
the class-conditional ones. The script gave its shape no caption-feature size, and the MMDiT
build crashed with a traceback (``KeyError: 'text_dim'``) before anything was timed.

A real process runs the script as a user does, on the CPU at a tiny size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_step.py"


def test_a_text_conditioned_variant_is_timed_beside_a_dit() -> None:
    argv = ["--variants", "mmdit-tiny,tiny", "--latent", "4x8x8", "-b", "2", "--steps", "1"]
    argv += ["--warmup", "0", "--peak-size", "64", "--token-dim", "32", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, check=False
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in out, out
    rows = [line for line in res.stdout.splitlines() if "mmdit-tiny" in line and "%" in line]
    assert len(rows) == 1, out  # its row of the table, with its step time and MFU
    assert "mmdit-tiny: engine work per step" in " ".join(res.stdout.split()), out
