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
from repackctl.progress import LOG_FILE, ProgressFactory, null_progress, with_log_file
from repackctl.settings.resume import resume_and_report
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
    """Resume from the run's stored settings, build the task, train it with ``log.txt``."""
    settings, record = resume_and_report(run_dir_of(settings), settings, record, section)
    task, config = build(settings, sources=(record or {}).get("sources"))
    if record is not None:
        config.extra["settings"] = record
    return task, train(task, config, with_log_file(progress, Path(config.run_dir) / LOG_FILE))


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
