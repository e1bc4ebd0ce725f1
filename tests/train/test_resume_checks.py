"""Round 6 of the training-engine audit: what a resume does with checkpoints it cannot use, and
the step numbers of non-finite steps.

1. A `train dit` run whose every checkpoint failed verification (a half-copied run folder, a
   damaged disk) trained again from step 0: it truncated ``metrics.jsonl``, re-saved over the
   damaged folders and rotated them away, with only a ``Warning:`` line. It is now refused,
   nothing touched.
2. The ``Warning: skipping checkpoint …`` of a newer checkpoint that resume skipped went to
   stderr only: ``log.txt`` said "resumed from step-2" of a run that had reached step 4.
3. "step N: non-finite loss or gradient" and the stop error named the 0-based index of the
   step: one less than its metrics row and the checkpoints' step numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support import train_toy_script as toy
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError, TrainingError
from repackctl.progress import null_progress
from repackctl.train import train
from repackctl.train.logging import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "dit", "--size", "tiny", "-b", "8", "--device", "cpu", "--image-every", "0"]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_train_dit_logs_skipped_checkpoints_and_refuses_a_run_with_none_usable(
    tmp_path, tmp_path_factory
):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    run = tmp_path / "runs" / "d"
    train_d = [*TRAIN, "--name", "d", "--ckpt-every", "2", "--log-every", "1"]
    cli_ok(*train_d, "--steps", "4")
    ckpts = run / "checkpoints"
    _flip_last_byte(ckpts / "step-0000004" / "ema.safetensors")
    out = cli_ok(*train_d, "--steps", "5")
    assert "resumed from" in out and "step-0000002 (step 2)" in out, out
    log = (run / "log.txt").read_text()
    assert "Warning: skipping checkpoint step-0000004" in log, log
    assert log.index("skipping checkpoint step-0000004") < log.index("resumed from"), log
    # every checkpoint unusable (optim.pt lost in a copy): refused, not trained from step 0
    folders = sorted(p.name for p in ckpts.iterdir())
    assert "damaged-step-0000004-1" in folders, folders  # the re-save kept the damaged one
    steps = [f for f in folders if f.startswith("step-")]
    for folder in ckpts.iterdir():
        (folder / "optim.pt").unlink()
    before = {p: p.read_bytes() for p in (run / "metrics.jsonl", run / "log.txt")}
    out = cli_refused(CheckpointError.exit_code, *train_d, "--steps", "6")
    assert f"none of the {len(steps)} checkpoint(s)" in out and "optim.pt is missing" in out
    assert sorted(p.name for p in ckpts.iterdir()) == folders
    assert all((ckpts / f / "model.safetensors").is_file() for f in folders)
    assert {p: p.read_bytes() for p in before} == before


def _config(run: Path, **kw):
    base = dict(steps=6, global_batch=8, ckpt_every=10, log_every=1, block=4, buffer_blocks=2)
    return toy.make_config(str(run), **{**base, "cpu": True, "lr": 1e-2, **kw})


def test_non_finite_steps_are_named_as_their_metrics_rows(tmp_path):
    bars = []

    def progress(*args, **kwargs):
        bar = null_progress(*args, **kwargs)
        bars.append(bar)
        return bar

    run = tmp_path / "run"
    # the 4th step; a save point at step 2 (an only save point after the bad step is skipped,
    # and a run that saved nothing is an Error)
    train(toy.ToyTask(nan_steps=frozenset({3})), _config(run, ckpt_every=2), progress)
    (bad,) = [r["step"] for r in read_metrics(run) if not math.isfinite(r["loss/gen"])]
    lines = [m for bar in bars for m in bar.messages if "update skipped" in m]
    assert lines == [f"step {bad}: non-finite loss or gradient, update skipped"], lines
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[bad - 1])["bad_steps"] == 1
    with pytest.raises(TrainingError, match=rf"\(up to step {bad}\)"):
        task = toy.ToyTask(nan_steps=frozenset({3}))
        train(task, _config(tmp_path / "stop", max_nonfinite_steps=1))
