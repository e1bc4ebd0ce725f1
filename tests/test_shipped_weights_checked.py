"""The built-in encoder's shipped weights are checked against the sha256 their card records.

``repackctl/encoders/weights/builtin.json`` records the sha256 of ``builtin.safetensors`` beside
it, but nothing read it: a byte flipped in the installed weights (a damaged package, a disk
error) loaded without a word and `extract` wrote features of other weights under the name
``builtin``, in a cache entry of their own. Now it is one ``Error:`` naming the file, with a
``Hint:`` (reinstall), before anything is written.

Real components: a copy of the package in a temporary folder whose weights have one byte
flipped, and `repackctl extract` as a real process on a real (empty) cache root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repackctl.encoders.builtin import SHIPPED_WEIGHTS

pytestmark = pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="no shipped weights here")


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the package whose shipped weights have one byte flipped (in the tensors, not
    the header: the file still loads)."""
    package = Path(__file__).resolve().parents[1] / "repackctl"
    root = tmp_path / "pkg"
    shutil.copytree(package, root / "repackctl", ignore=shutil.ignore_patterns("__pycache__"))
    weights = root / "repackctl" / "encoders" / "weights" / SHIPPED_WEIGHTS.name
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    return root


def test_extract_refuses_damaged_shipped_weights(tmp_path):
    root = _package_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPACKCTL_")}
    env |= {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    env |= {f"REPACKCTL_{k}": str(tmp_path / k.lower()) for k in ("CACHE", "RUNS", "SAMPLES")}
    res = subprocess.run(
        [sys.executable, "-m", "repackctl", "extract", "-n", "8", "--resolution", "32"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    (error,) = [line for line in out.splitlines() if line.startswith("Error:")]
    assert "builtin.safetensors" in error and "damaged" in error, out
    assert "Hint:" in out and "reinstall" in out, out
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
