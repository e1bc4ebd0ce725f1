"""`repackctl train dit`: a DiT on packed latents with flow matching and REPA (RePack stage 2).

Follows the official RePack-then-Refine stage 2 (LightningDiT recipe: linear path, velocity
prediction, logit-normal t, MSE + (1 − cos) loss, AdamW 2e-4 (0.9, 0.95), EMA 0.9999; see
``reference/methods.md``) in our time convention (t = 0 data, t = 1 noise, DESIGN.md §2), plus
REPA (Yu et al. 2025, sihyun-yu/REPA ``train.py`` / ``loss.py``): an MLP projector on the hidden
state after block k, negative cosine against the frozen encoder's tokens of the same images and
the same flip, read from the cache (the encoder never runs here), weight λ = 0.5, optionally
switched off at a step (HASTE).

Randomness: every sample's flip, posterior noise, t, noise and label-drop come from a generator
keyed by (seed, step, sample index), never from the global RNG or the batch split. So a run gives
the same numbers with any number of processes or micro-batches, and resumes bit-identically.

``run_dit_train`` is the library entry of the CLI; ``load_dit`` rebuilds a trained model from
a run or checkpoint (the contract used by sampling). Shapes: B batch, d latent channels,
h×w latent grid, T tokens, D width, C encoder width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repackctl.dit.task import build_task, dit_run_dir
from repackctl.errors import ConfigError
from repackctl.paths import run_root_of
from repackctl.progress import LOG_FILE, ProgressFactory, null_progress, with_log_file
from repackctl.settings.resume import resume_and_report
from repackctl.train.checkpoint import latest_checkpoint, read_state
from repackctl.train.logging import read_metrics
from repackctl.train.loop import TrainResult, train

# --------------------------------------------------------------------------- model selection


# --------------------------------------------------------------------------- the task


# --------------------------------------------------------------------------- the run


@dataclass
class DiTTrainResult:
    """What ``train_dit`` did, for the CLI to render."""

    run_dir: Path
    result: TrainResult
    model_id: str
    num_params: int
    latents: str
    entry: str
    features: str | None
    num_samples: int
    latent_shape: tuple[int, int, int]
    in_memory: bool
    grid_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Whether this call trained any step (a run already at its steps is only shown)."""
        return self.result.resumed_from != self.result.step

    @property
    def idle_note(self) -> str | None:
        """What to do when nothing was trained (the run is already at the steps asked for)."""
        if self.trained:
            return None
        step = self.result.step
        return (
            f"nothing to train: run {self.run_dir.name} is at step {step} (pass --steps N with "
            f"N > {step} to train on)"
        )

    @classmethod
    def of(cls, task: Any, result: TrainResult, **more: Any) -> Any:
        """What the trained ``task`` and its ``result`` say (``more``: a subclass's fields)."""
        return cls(
            run_dir=result.run_dir,
            result=result,
            model_id=task.spec.model_id,
            num_params=task.num_params,
            latents=task.data.ref.pack_id,
            entry=task.data.ref.entry,
            features=task.data.features_id,
            num_samples=len(task.data),
            latent_shape=task.data.shape,
            in_memory=task.data.in_memory,
            grid_note=task._grid_note,
            **more,
        )


def resume_and_train(
    settings: Any,
    record: dict | None,
    progress: ProgressFactory,
    section: str,
    run_dir_of: Callable[[Any], Path],
    build: Callable[..., tuple[Any, Any]],
) -> tuple[Any, TrainResult]:
    """Resume from the run's stored settings, build the task, train it with ``log.txt``.

    A run without a checkpoint must train at least one step (refused before anything is read in
    bulk or written); a run whose checkpoint is at or past ``steps`` is shown as it is, with
    nothing trained and nothing written."""
    settings, record = resume_and_report(run_dir_of(settings), settings, record, section)
    run_dir = run_dir_of(settings)
    steps = int(getattr(settings, section).steps)
    # the checkpoint the engine would resume from (the same verification, warnings left to it)
    latest = latest_checkpoint(run_dir, warn=None)
    if latest is None:
        check_new_run(steps, run_dir, section, (record or {}).get("sources"))
    task, config = build(settings, sources=(record or {}).get("sources"))
    if latest is not None and steps <= int(read_state(latest).get("step", 0)):
        return task, shown_run(task, latest)
    if record is not None:
        config.extra["settings"] = record
    return task, train(task, config, with_log_file(progress, Path(config.run_dir) / LOG_FILE))


def check_new_run(
    steps: int, run_dir: Path, section: str, sources: dict[str, str] | None = None
) -> None:
    """A run without a checkpoint trains at least one step: ``--steps 0`` would write a run
    folder with no checkpoint in it (and a summary of nothing)."""
    if steps >= 1:
        return
    origin = (sources or {}).get(f"{section}.steps")
    raise ConfigError(
        f"{section}.steps is {steps}"
        + (f" (from {origin})" if origin else "")
        + f": run {run_dir.name} has no checkpoint yet, so it would train nothing and write no "
        "checkpoint",
        "pass --steps N with N >= 1; --steps 0 only shows a run that has a checkpoint",
    )


def shown_run(task: Any, checkpoint: Path) -> TrainResult:
    """The summary of a run with nothing left to train (its checkpoint is at or past the steps
    asked for): the checkpoint's step and the last losses logged up to it; nothing is trained or written.

    The task is checked against the checkpoint (its latents and their stats) as a resume would,
    so the summary never pairs the run with data it was not trained on."""
    state = read_state(checkpoint)
    task.load_state_extra(state.get("extra", {}))
    task.build()  # the model row's parameter count (no weights are loaded)
    done = int(state.get("step", 0))
    run_dir = run_root_of(checkpoint)
    logged = [r for r in read_metrics(run_dir) if int(r.get("step", -1)) <= done]
    last = {k: float(v) for k, v in (logged[-1] if logged else {}).items() if k.startswith("loss/")}
    return TrainResult(
        run_dir=run_dir,
        step=done,
        checkpoint=checkpoint,
        resumed_from=done,
        bad_steps=int(state.get("bad_steps_total", 0)),
        last_logs=last,
        steps_per_s=0.0,
    )


def train_dit(
    settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> DiTTrainResult:
    """Train (or resume) a DiT on the packed latents the settings select.

    Resuming an existing run starts from the settings it was started with; see
    ``repackctl.settings.resume`` (changes are printed, breaking ones refused).
    """
    task, result = resume_and_train(
        settings, config_record, progress, "dit", dit_run_dir, build_task
    )
    return DiTTrainResult.of(task, result)


def run_dit_train(
    settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> Path:
    """Train (or resume) ``settings.dit``'s DiT; returns the run folder."""
    return train_dit(settings, progress, config_record).run_dir


# --------------------------------------------------------------------------- loading
