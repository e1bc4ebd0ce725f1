"""`pack train`'s summary shows the losses of the step its checkpoint is at.

It took the last line of ``metrics.jsonl``, which a run killed after its last save (or whose
last save was skipped for non-finite values) holds past the checkpoint: `pack train --steps 2`
on a run whose newest checkpoint is step 2 said "steps 2" and showed step 4's losses. It now
shows the last row logged at or before the checkpoint's step, as `train dit` and `refine train`
do (``repackctl.train.shown.last_losses``). Real CLI runs on a real patchpix cache.
"""

from __future__ import annotations

import json
import shutil

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("summary-losses-cache", 16)

TINY = [
    *("--preset", "small", "--encoder", "patchpix", "--resolution", "32", "-c", "4"),
    *("--ch", "8", "--batch-size", "8", "--log-every", "1", "--image-every", "0"),
    *("--device", "cpu", "--gan-weight", "0", "--name", "pk"),
]


def _losses(run, step: int) -> str:
    """The summary's text of the losses logged at ``step`` (as the table prints them)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["step"] == step)
    terms = sorted((k[5:], v) for k, v in row.items() if k.startswith("loss/"))
    return ", ".join(f"{k} {v:.4g}" for k, v in terms if k != "total")


def test_the_summary_shows_the_losses_of_the_checkpoint_step(cache, tmp_path):
    run = tmp_path / "runs" / "pk"
    cli_ok("pack", "train", *TINY, "--steps", "4", "--ckpt-every", "2")
    # a kill after step 4 was logged, before its checkpoint was saved
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    # the first term of each: on the table's first line however the rest wraps
    at_2, at_4 = _losses(run, 2).split(", ")[0], _losses(run, 4).split(", ")[0]
    assert at_2 != at_4  # the test tells them apart
    out = cli_ok("pack", "train", "--name", "pk", "--steps", "2", "--device", "cpu")
    assert "step-0000002" in out and "nothing to train" in out, out
    assert f"last losses │ {at_2}" in out, (at_2, out)
    assert at_4 not in out, (at_4, out)
