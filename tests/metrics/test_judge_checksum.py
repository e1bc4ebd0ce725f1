"""The judge's weights are checked against the sha256 that ``judge.json`` records.

``load_judge`` (``benchmarks/reproduce_small.py`` reloads its judge from ``<out>/judge``) read
``judge.safetensors`` without any check: a changed byte in the tensors (a bad disk, a copy cut
and patched, an edit) was used silently, and every judge FD and class accuracy of the study
came from other weights. ``save_judge`` now records ``weights_sha256`` in ``judge.json`` and
``load_judge`` refuses weights that do not match it (``CheckpointError``: one ``Error:`` line and
a ``Hint:``); a judge saved before ``judge.json`` recorded it loads as before.

Real files; the error as a script prints it, in a real subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import subprocess_env

from repackctl.errors import CheckpointError
from repackctl.files import sha256_file
from repackctl.metrics.judge import JudgeRecipe, cached_judge, judge_features, load_judge

RECIPE = JudgeRecipe(steps=2, batch_size=8, seed=1, width=8)
LOAD = (
    "import sys; from repackctl.errors import script_main; "
    "from repackctl.metrics.judge import load_judge; "
    "sys.exit(script_main(lambda: load_judge(sys.argv[1]) and None)())"
)


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8), np.arange(16) % 2


def test_a_changed_byte_in_the_weights_is_refused(tmp_path):
    x, y = _data()
    folder = tmp_path / "judge"
    judge, meta = cached_judge(folder, x, y, 2, RECIPE)
    weights = folder / "judge.safetensors"
    saved = sha256_file(weights)
    load_judge(folder)  # as saved: loads

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x40  # a byte of the last tensor (the head's bias): still a valid file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_judge(folder)
    with pytest.raises(CheckpointError):  # the study's path: no silent reuse
        cached_judge(folder, x, y, 2, RECIPE)
    assert weights.read_bytes() == bytes(data)  # left as it is for the user to look at
    assert meta["weights_sha256"] == saved  # what judge.json records

    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder)],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == CheckpointError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: the judge's weights"), proc.stderr
    assert str(weights) in lines[0]
    assert lines[1] == f"Hint: move {folder} aside and run again to train a new one"


def test_a_judge_saved_before_the_checksum_loads_as_before(tmp_path):
    x, y = _data()
    folder = tmp_path / "judge"
    judge, _ = cached_judge(folder, x, y, 2, RECIPE)
    doc = json.loads((folder / "judge.json").read_text())
    del doc["weights_sha256"]  # as an earlier version wrote it
    (folder / "judge.json").write_text(json.dumps(doc))
    again, meta = load_judge(folder)
    assert "weights_sha256" not in meta
    assert (judge_features(again, x) == judge_features(judge, x)).all()
