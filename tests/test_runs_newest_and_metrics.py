"""`runs` as a careful user meets it, on a real pack run (extract → pack train, patchpix 32 px).

- The pack run that `pack encode`, `refine train` and `sample` take without --run / --pack-run
  ("the newest pack run") is the one whose newest checkpoint was written last: `evaluate recon`
  of an older pack run writes its report into that run's checkpoint folder, which made the
  older run "the newest" (the note named it so) and the next command worked on it.
- `runs info` of a run whose metrics.jsonl holds bytes that are not UTF-8 (a damaged disk
  block) shows the run, its good metrics lines and no traceback, as it skips a line cut by a
  kill.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import build_val_stack

pytestmark = pytest.mark.usefixtures("one_thread")

PACK = [
    *("pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16", "-c", "4"),
    *("--ch", "8", "--disc-channels", "8", "--batch-size", "4", "--steps", "2"),
    *("--image-every", "0", "--device", "cpu"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """A cache with train and val entries, and the pack run ``pack-tiny`` trained on it."""
    return build_val_stack(tmp_path_factory.mktemp("audit7-runs"))


def _roots(stack: dict[str, str]) -> list[str]:
    return ["--cache", stack["cache"], "--runs", stack["runs"]]


def test_evaluating_an_older_pack_run_does_not_make_it_the_newest(stack) -> None:
    cli_ok(*PACK, "--name", "pack-new", *_roots(stack))  # trained after pack-tiny
    out = cli_ok("refine", "train", "--show-config", *_roots(stack))
    assert "using pack-new, the newest pack run" in out, out
    # a report written into the older run's checkpoint is no training
    cli_ok("evaluate", "recon", "--run", "pack-tiny", "--split", "val", "--device", "cpu",
           *_roots(stack))  # fmt: skip
    assert list((Path(stack["runs"]) / "pack-tiny").glob("checkpoints/step-*/recon-*.json"))
    out = cli_ok("refine", "train", "--show-config", *_roots(stack))
    assert "using pack-new, the newest pack run" in out, out


def test_runs_info_of_a_run_with_damaged_metrics(stack, tmp_path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(Path(stack["runs"]) / "pack-tiny", runs / "pk")
    metrics = runs / "pk" / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1])
    with metrics.open("ab") as f:
        f.write(b'{"step": 9, "loss/total": \xff\xfe\n')  # not UTF-8: a damaged block
    out = cli_ok("runs", "info", "pk", "--runs", str(runs))
    assert "checkpoint step-0000002 complete" in out, out
    assert f"metrics step {last['step']}" in out and "metrics step 9" not in out, out
    data = json.loads(cli_ok("runs", "info", "pk", "--runs", str(runs), "--json"))
    assert data["metrics_tail"][-1]["step"] == last["step"]


def test_a_checkpoint_rotated_away_while_listed_is_no_crash(stack, tmp_path) -> None:
    """`runs info` of a run being trained: it lists the checkpoints, then hashes each (seconds
    on a large run); the training's rotation (``keep_last``) meanwhile deletes the oldest. The
    reading of that folder stopped `runs info` (and `runs ls`) with a FileNotFoundError."""
    from repackctl.runs import checkpoint_info, describe_run
    from repackctl.train.checkpoint import load_weights, read_state, save_checkpoint

    source = Path(stack["runs"]) / "pack-tiny" / "checkpoints" / "step-0000002"
    state = read_state(source)
    weights = {k: load_weights(source, k) for k in ("model", "ema")}
    run = tmp_path / "runs" / "pk"
    keep = {k: state[k] for k in ("extra", "config") if k in state}
    save_checkpoint(run, 2, weights, {}, keep)
    listed = sorted((run / "checkpoints").glob("step-*"))  # what `runs info` read first
    save_checkpoint(run, 3, weights, {}, keep, keep_last=1)  # the training saves and rotates
    assert not listed[0].exists()
    gone = checkpoint_info(listed[0])  # the folder `runs info` reads next
    assert not gone.complete and gone.bytes == 0
    assert [c.name for c in describe_run(run).checkpoints] == ["step-0000003"]
