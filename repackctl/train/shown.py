"""A run with nothing left to train, shown as it is (DESIGN.md "Nothing lost"; shared by
`train dit`, `pack train` and `refine train`): ``--steps N`` at or below the run's checkpoint
step trains nothing and writes nothing in the run folder (only train.lock is taken), except
``curves.png`` where a kill after the last checkpoint left it missing or stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repackctl.runtime import is_main_process
from repackctl.train.checkpoint import read_state
from repackctl.train.logging import read_metrics, redraw_stale_curves
from repackctl.train.protocol import TrainResult


def last_losses(run_dir: Path, step: int) -> dict[str, float]:
    """The ``loss/*`` values of the last metrics row logged at or before ``step``."""
    logged = [r for r in read_metrics(run_dir) if int(r.get("step", -1)) <= step]
    return {k: float(v) for k, v in (logged[-1] if logged else {}).items() if k.startswith("loss/")}


def idle_lines(run_dir: Path, checkpoint: Path | None, steps: int | None) -> list[str] | None:
    """The lines that show a run whose ``checkpoint`` is at or past ``steps`` (None: it trains
    on, or ``steps`` is unknown yet): its step, checkpoint and last losses. A missing or stale
    ``curves.png`` is drawn."""
    if checkpoint is None or steps is None:
        return None
    done = int(read_state(checkpoint).get("step", 0))
    if steps > done:
        return None
    if is_main_process():
        redraw_stale_curves(run_dir)
    losses = ", ".join(f"{k[5:]} {v:.4g}" for k, v in last_losses(run_dir, done).items())
    return [
        f"nothing to train: run {run_dir.name} is at step {done}, --steps is {steps} (pass "
        f"--steps N with N > {done} to train on)",
        f"checkpoint {checkpoint.name}; last losses: {losses or '-'}",
    ]


def shown_run(task: Any, checkpoint: Path) -> TrainResult:
    """The summary of a run with nothing left to train (its checkpoint is at or past the steps
    asked for): the checkpoint's step and the last losses logged up to it; nothing is trained or
    written.

    The task is checked against the checkpoint (its latents and their stats) as a resume would,
    so the summary never pairs the run with data it was not trained on."""
    state = read_state(checkpoint)
    task.load_state_extra(state.get("extra", {}))
    task.build()  # the model row's parameter count (no weights are loaded)
    done = int(state.get("step", 0))
    run_dir = checkpoint.parent.parent  # runs/<name>/checkpoints/step-…
    if is_main_process():
        redraw_stale_curves(run_dir)
    return TrainResult(
        run_dir=run_dir,
        step=done,
        checkpoint=checkpoint,
        resumed_from=done,
        bad_steps=int(state.get("bad_steps_total", 0)),
        last_logs=last_losses(run_dir, done),
        steps_per_s=0.0,
    )
