"""`sample -n N` with more samples than a folder's six-digit names hold (N > 1,000,000: sample
1,000,000 would be ``1000000.png``) is refused up front, with an ``Error:`` and a ``Hint:``,
before anything is loaded or written.

Before, the whole generation ran, then the assembly refused the seven-digit names
(``latents/1000000.npy`` is not a file `sample` writes). The refusal is checked on a real run
in a subprocess with a time limit: the old code started generating a million samples.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.stack import shared_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def test_more_samples_than_the_folder_names_hold_are_refused_before_anything(stack, tmp_path):
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "repackctl", "sample", "-r", "dit-tiny", "--steps", "1"]
    cmd += ["-n", "1000001", "--device", "cpu", "--out", str(out)]
    env = subprocess_env(Path(stack["runs"]).parent)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, err
    assert "Traceback" not in err and "Error:" in err and "Hint:" in err, err
    assert "--num 1000001" in err and "at most 1000000" in err, err
    assert not out.exists()  # nothing written


def test_the_largest_allowed_folder_has_names_the_folder_knows(tmp_path):
    from repackctl.sample.folder import _FOLDER_FILES, _LATENT_FILES, MAX_SAMPLES, png_path

    last = MAX_SAMPLES - 1
    assert _FOLDER_FILES.fullmatch(png_path(tmp_path, last).name)
    assert _LATENT_FILES.fullmatch(f"{last:06d}.npy")
    assert _LATENT_FILES.fullmatch(f"written-000000-{last:06d}.json")
    assert not _FOLDER_FILES.fullmatch(png_path(tmp_path, MAX_SAMPLES).name)  # 7 digits
