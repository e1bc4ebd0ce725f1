"""What a training stage hands the engine: the ``TrainTask`` protocol and its small types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from repackctl.errors import TrainingError


@dataclass
class OptimizerSpec:
    """Which named modules one AdamW updates; ``None`` fields fall back to the TrainConfig."""

    modules: tuple[str, ...] = ("model",)
    # False for a module called several times per backward (a GAN discriminator): its grads
    # are then reduced once per step after the backward passes instead of by DDP
    overlap: bool = True
    # True when each forward of the modules uses every parameter (a module not called in a
    # step is fine): DDP then skips its per-step search of the autograd graph for unused ones
    # (and its warning on every process that it found none). A wrong True fails loudly at the
    # next step (DDP: "Expected to have finished reduction"), never silently.
    every_parameter_used: bool = False
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


@dataclass
class StepOutput:
    """What ``training_step`` returns: one scalar loss per optimizer (in order) and extra logs."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class TrainTask(Protocol):
    """What a training stage implements. Optional hooks (looked up with ``getattr``):

    * ``optimizers() -> dict[str, OptimizerSpec]`` (default ``{"model": OptimizerSpec()}``)
    * ``on_images(modules, ema_module, step, run_dir)``: write an image grid; main process only,
      every ``image_every`` steps, so it must not use collectives.
    * ``state_extra() -> dict``: JSON-safe data stored in ``state.json`` (latent stats, cache ids);
      ``load_state_extra(extra)`` gets it back on resume.
    * ``checkpoints_in_use(run_dir) -> Mapping[str, Sequence[str]]``: the run's step folders
      that other runs use (``step-0000020`` → their names); ``keep_last`` rotation keeps them
      beside the newest ``keep_last`` and logs them. Asked at each checkpoint, main process only.
    """

    def build(self) -> dict[str, nn.Module]:
        """Named modules; ``"model"`` is required (it gets the EMA)."""
        ...

    def num_samples(self) -> int:
        """Size of the training set; indices run over ``range(num_samples())``."""
        ...

    def get_batch(
        self,
        indices: np.ndarray,
        step: int,
        generator: np.random.Generator,
        repeats: np.ndarray | None = None,
    ) -> Any:
        """Read the samples ``indices`` (tensors, or dicts/lists of them).

        Runs in a background thread when ``config.prefetch``: take randomness (flips, crops,
        noise) only from ``generator``, derived from (seed, step, position of the micro-batch in
        the global batch), or, to draw the same for any process count, from each sample's own
        generator of (seed, step, sample, ``repeats``: how many times the global batch read the
        sample before, ``data.cached.sample_generators``), as the pack, DiT and refiner do.
        """
        ...

    def training_step(
        self, modules: dict[str, nn.Module], batch: Any, step: int
    ) -> StepOutput | tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Forward one micro-batch; return mean-reduced losses per optimizer, in order."""
        ...


@dataclass
class TrainResult:
    """Summary of a finished ``train`` call."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    resumed_from: int | None
    bad_steps: int
    last_logs: dict[str, float]
    steps_per_s: float  # the whole fit: checkpoint writes, image grids, curves included
    # the training steps alone (data, forward, backward, optimizer); 0 when none ran
    loop_steps_per_s: float = 0.0


def unpack_step_output(out: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    if isinstance(out, StepOutput):
        return out.losses, out.logs
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping):
        return dict(out[0]), dict(out[1])
    raise TrainingError(
        f"training_step returned {type(out).__name__}",
        "return StepOutput(losses={'model': loss}, logs={...}) or a (losses, logs) tuple",
    )
