"""Resolved settings of one training run (``TrainConfig``), shared by pack, DiT and refiner.

The defaults follow the official RePack-then-Refine stage-2 recipe (AdamW 2e-4, betas (0.9, 0.95),
no weight decay, EMA 0.9999, lr 1e-4 after 240k steps; ``reference/methods.md``). Every field is
plain data so the whole config round-trips through ``config.json`` and ``state.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repackctl.errors import ConfigError

SCHEDULES = ("constant", "warmup", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything the loop needs to run, resume and reproduce a training run."""

    run_dir: str
    steps: int = 1000
    global_batch: int = 256  # samples per optimizer step, summed over processes and micro-batches
    grad_accum: int = 1  # micro-batches per process and step
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0  # linear ramp for "warmup" and "cosine"
    drop_step: int = 240_000  # "step": lr becomes drop_lr from this step on
    drop_lr: float = 1e-4
    min_lr: float = 0.0  # "cosine": lr at the last step
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates
    clip_grad: float | None = None  # max global grad norm per optimizer; None: no clipping
    precision: str = "fp32"
    compile: bool = False
    ckpt_every: int = 10_000
    keep_last: int = 3  # complete checkpoints kept (older ones deleted); 0 keeps all
    log_every: int = 100
    image_every: int = 0  # 0: never call the task's on_images hook
    seed: int = 0
    max_bad_steps: int = 10  # non-finite steps in a row before TrainingError
    cpu: bool = False  # force Accelerator(cpu=True) (tests, laptops, CPU-only torchrun)
    block: int = (
        1  # sampler: consecutive indices read together (Zarr chunk size); 1 = plain shuffle
    )
    buffer_blocks: int = 16  # sampler: shuffle samples within this many blocks
    prefetch: bool = True  # read the next step's batch in a background thread
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific settings, stored as-is

    def __post_init__(self) -> None:
        self.run_dir = str(self.run_dir)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot run."""

        def bad(msg: str, hint: str) -> ConfigError:
            return ConfigError(msg, hint)

        if self.steps < 0:
            raise bad(f"steps must be >= 0, got {self.steps}", "pass --steps N with N >= 0")
        for name in ("global_batch", "grad_accum", "ckpt_every", "log_every", "block"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}", f"set {name} >= 1")
        if self.buffer_blocks < 1:
            raise bad(f"buffer_blocks must be >= 1, got {self.buffer_blocks}", "use 1 or more")
        if self.global_batch % self.grad_accum:
            raise bad(
                f"global_batch {self.global_batch} is not divisible by grad_accum {self.grad_accum}",
                "pick grad_accum so that global_batch / (processes * grad_accum) is an integer",
            )
        if self.schedule not in SCHEDULES:
            raise bad(
                f"unknown schedule {self.schedule!r}", f"choose one of {', '.join(SCHEDULES)}"
            )
        if self.precision not in PRECISIONS:
            raise bad(
                f"unknown precision {self.precision!r}", f"choose one of {', '.join(PRECISIONS)}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad(f"lr must be a positive number, got {self.lr}", "e.g. --lr 2e-4")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad(f"betas must lie in [0, 1), got {self.betas}", "e.g. (0.9, 0.95)")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise bad(f"ema_decay must lie in [0, 1], got {self.ema_decay}", "e.g. 0.9999")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise bad(f"clip_grad must be > 0 or None, got {self.clip_grad}", "e.g. 1.0")
        if self.schedule in ("warmup", "cosine") and self.warmup_steps < 0:
            raise bad("warmup_steps must be >= 0", "e.g. --warmup-steps 1000")
        if self.max_bad_steps < 1:
            raise bad("max_bad_steps must be >= 1", "e.g. 10")
        if self.keep_last < 0 or self.image_every < 0:
            raise bad("keep_last and image_every must be >= 0", "0 disables them")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training settings: {', '.join(unknown)}",
                f"valid settings: {', '.join(sorted(known))}",
            )
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)
