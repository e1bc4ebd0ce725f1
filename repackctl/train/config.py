"""Resolved settings of one training run (``TrainConfig``), shared by pack, DiT and refiner.

Built once per stage by ``TrainConfig.from_settings`` from that stage's settings section (the
defaults live in ``repackctl/settings/``, not here). Every field is plain data so the whole config
round-trips through ``config.json`` and ``state.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repackctl.errors import ConfigError

SCHEDULES = ("constant", "warmup", "step", "cosine")
PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything the engine needs to run, resume and reproduce a training run.

    Fields that a stage's settings declare are required: their defaults live once, in
    ``repackctl/settings/<stage>.py``, and ``from_settings`` maps them here. Defaults remain only
    for what some stage has no setting for (then the stage trains with that value).
    """

    run_dir: str
    steps: int
    global_batch: int  # samples per optimizer step, summed over processes and micro-batches
    lr: float
    betas: tuple[float, float]
    ema_decay: float
    ema_warmup: bool  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates
    precision: str
    seed: int
    ckpt_every: int
    log_every: int
    image_every: int  # 0: never call the task's on_images hook
    cpu: bool  # force Accelerator(cpu=True) (tests, laptops, CPU-only torchrun)
    precision_source: str = "default"  # flag, env, file …, launcher or default (run header)
    grad_accum: int = 1  # micro-batches per process and step
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0  # linear ramp for "warmup" and "cosine"
    drop_step: int = 240_000  # "step": lr becomes drop_lr from this step on
    drop_lr: float = 1e-4
    min_lr: float = 0.0  # "cosine": lr at the last step
    clip_grad: float | None = None  # max global grad norm per optimizer; None: no clipping
    compile: bool = False  # regional torch.compile of the model's blocks
    # on CUDA: TF32 matmuls and convolutions (True), or PyTorch's defaults (False: strict fp32
    # matmuls, TF32 cuDNN convolutions; what the official RePack stage 2 ran). Runs stored
    # before this field existed trained with TF32 on, so it defaults to True.
    tf32: bool = True
    parallel: str = "ddp"  # several processes: "ddp" (replicated) or "fsdp" (FSDP2 shards)
    keep_last: int = 3  # complete checkpoints kept (older ones deleted); 0 keeps all
    max_nonfinite_steps: int = 10  # non-finite steps in a row before TrainingError
    block: int = 1  # sampler: consecutive indices read together (Zarr chunk); 1 = plain shuffle
    buffer_blocks: int = 16  # sampler: shuffle samples within this many blocks (stages resolve
    # their setting "none" with resolve_buffer_blocks: the memory budget, or the run's record)
    # read the next step's batch in a background thread: None = on a GPU only. On a CPU the
    # thread only competes with the step's own threads (its torch ops start a second OpenMP
    # team): on 2 cores pack training ran 3.4 instead of 6.1 steps/s with it, the DiT 6 % slower.
    prefetch: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific settings, stored as-is

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        section: Any,
        run_dir: str | Path,
        sources: dict[str, str] | None = None,
        **overrides: Any,
    ) -> TrainConfig:
        """The config of one stage: same-named fields of ``section`` (a settings model), the
        global seed / precision / device of ``settings``, then ``overrides`` (values a stage
        resolves itself, e.g. from a preset plan). ``sources`` is the settings provenance
        (``ResolvedSettings.to_dict()["sources"]``), used to rank precision against the launcher.
        """
        from repackctl.runtime import resolve_precision

        known = {f.name for f in dataclasses.fields(cls)}
        values = {
            k: v
            for k, v in section.model_dump().items()
            if k in known and k not in ("extra", "run_dir") and v is not None
        }
        data = section.model_dump()
        if "beta1" in data and "beta2" in data:
            values["betas"] = (data["beta1"], data["beta2"])
        if data.get("batch_size") is not None and "global_batch" not in values:
            values["global_batch"] = data["batch_size"]
        if sources is not None:
            source = sources.get("precision", "default")
        else:  # a library call: only the field's default counts as unset
            default = type(settings).model_fields["precision"].default
            source = "default" if settings.precision == default else "settings"
        precision, source = resolve_precision(settings.precision, source)
        values.update(
            seed=settings.seed,
            precision=precision,
            precision_source=source,
            cpu=uses_cpu(settings.device),
        )
        values.update(overrides)
        return cls(run_dir=str(run_dir), **values)

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
        if self.parallel not in PARALLEL:
            raise bad(
                f"unknown parallel mode {self.parallel!r}", f"choose one of {', '.join(PARALLEL)}"
            )
        if self.precision not in PRECISIONS:
            raise bad(
                f"unknown precision {self.precision!r}", f"choose one of {', '.join(PRECISIONS)}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad(f"lr must be a positive number, got {self.lr}", "e.g. --lr 2e-4")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad(f"betas must lie in [0, 1), got {self.betas}", "e.g. (0.9, 0.95)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad(
                f"ema_decay must lie in [0, 1), got {self.ema_decay}: with 1 the EMA never moves "
                "from the initial weights, and sampling uses the EMA",
                "e.g. --ema-decay 0.9999, or 0 for no EMA",
            )
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise bad(f"clip_grad must be > 0 or None, got {self.clip_grad}", "e.g. 1.0")
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise bad(
                f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the cosine schedule would "
                "raise the lr instead of decaying it",
                "pass a --min-lr below --lr, e.g. --min-lr 0",
            )
        if self.schedule in ("warmup", "cosine") and self.warmup_steps < 0:
            raise bad("warmup_steps must be >= 0", "e.g. --warmup-steps 1000")
        if self.max_nonfinite_steps < 1:
            raise bad("max_nonfinite_steps must be >= 1", "e.g. --max-nonfinite-steps 10")
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
        known = {f.name for f in dataclasses.fields(cls)} | {"max_bad_steps"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training settings: {', '.join(unknown)}",
                f"valid settings: {', '.join(sorted(known))}",
            )
        data = dict(data)
        if "max_bad_steps" in data:  # its name in runs written before 0.2
            data["max_nonfinite_steps"] = data.pop("max_bad_steps")
        data.setdefault("precision_source", "default")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


def uses_cpu(device: str) -> bool:
    """Whether the ``device`` setting means training on the CPU."""
    if device == "cpu":
        return True
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return False


def resolve_buffer_blocks(
    given: int | None,
    run_dir: str | Path | None,
    *,
    num_samples: int,
    block: int,
    row_bytes: int,
    memory_gb: float,
    in_memory: bool,
) -> int:
    """The sampler's shuffle window of a stage: the ``given`` value; else the one the run's newest
    checkpoint recorded (a resumed run keeps its order, whatever the memory budget is now); else
    ``sampler.auto_buffer_blocks`` of the data and the memory budget. The record is read from
    the newest ``state.json`` that verifies against its own sha256, without hashing the weights
    (the resume verifies those once; every checkpoint of a run records the same window)."""
    if given is not None:
        return int(given)
    from repackctl.run_files import checkpoint_config
    from repackctl.train.sampler import auto_buffer_blocks

    found = checkpoint_config(Path(run_dir)) if run_dir is not None else None
    recorded = found[1].get("buffer_blocks") if found is not None else None
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return int(recorded)
    return auto_buffer_blocks(num_samples, block, row_bytes, memory_gb, in_memory)
