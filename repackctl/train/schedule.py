"""Learning-rate schedules as pure functions of the step.

``step`` follows the official RePack-then-Refine stage 2 (lr 2e-4, then 1e-4 from step 240k;
``reference/methods.md``); ``constant`` is REPA's; ``warmup`` and ``cosine`` are the usual linear
ramp and half-cosine decay. Each optimizer gets its own ``LambdaLR`` whose factor is
``lr_at(step) / config.lr``, so an optimizer with another base lr (a discriminator) follows the
same shape. The factor is a closure, not a callable object, so ``LambdaLR.state_dict()`` holds only
numbers and ``optim.pt`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from repackctl.train.config import TrainConfig


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of the base optimizer for the update made at ``step`` (0-based)."""
    base = config.lr
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        return config.drop_lr if step >= config.drop_step else base
    warm = config.warmup_steps
    if warm > 0 and step < warm:
        return base * (step + 1) / warm  # first update already gets a non-zero lr
    if config.schedule == "warmup":
        return base
    # cosine from base (end of warmup) to min_lr (last step)
    span = max(config.steps - 1 - warm, 1)
    progress = min(max(step - warm, 0) / span, 1.0)
    return config.min_lr + 0.5 * (base - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def unfinished_warmup(config: TrainConfig) -> str | None:
    """A warning when the lr warm-up outlasts the run: its last update is made below ``lr``
    (a 4-step run with ``--warmup-steps 1000`` trained at 4e-6 of an lr of 1e-3). Not an error:
    a run may be continued later with more steps."""
    warm, steps = config.warmup_steps, config.steps
    if config.schedule not in ("warmup", "cosine") or warm <= 0 or warm < steps or steps < 1:
        return None
    return (
        f"Warning: the lr warm-up ({warm} steps) is not over by this run's last step ({steps}): "
        f"the lr ends at {lr_at(config, steps - 1):.3g}, not {config.lr:g} (pass --steps above "
        f"{warm} or a shorter --warmup-steps)"
    )


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of an optimizer's base lr at each step (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def factor(step: int) -> float:
        return lr_at(config, step) / config.lr

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """One scheduler per optimizer; call ``.step()`` once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
