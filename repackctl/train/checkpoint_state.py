"""The schema of a checkpoint's ``state.json`` (DESIGN.md §6), validated before anything is used.

A malformed field (``epoch: "abc"``, a truncated RNG state, ``latent_stats.mean: "x"``, a state
holding only ``{"step": 30}``) becomes one ``CheckpointError`` line naming the file and the field,
instead of a ``ValueError``/``TypeError`` traceback deep inside resume or sampling.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from repackctl.errors import CheckpointError

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
TORCH_CPU_RNG_BYTES = 5056  # torch.get_rng_state().numel() of the Mersenne-Twister generator


def _finite(values: list[float], what: str) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} holds a non-finite number")
    return values


class LatentStats(BaseModel):
    """Per-channel mean/std of packed latents: finite floats, one of each per channel."""

    model_config = ConfigDict(extra="allow")
    mean: list[Annotated[float, Field(strict=True)]] = Field(min_length=1)
    std: list[Annotated[float, Field(strict=True)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> LatentStats:
        _finite(self.mean, "mean")
        _finite(self.std, "std")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels, std {len(self.std)}")
        return self


class RngState(BaseModel):
    """One process's Python, NumPy and torch RNG states as written by ``rng_state``."""

    model_config = ConfigDict(extra="forbid")
    python: tuple[NonNegInt, list[Annotated[int, Field(ge=0, lt=2**32)]], float | None]
    numpy: tuple[str, list[Annotated[int, Field(ge=0, lt=2**32)]], NonNegInt, NonNegInt, float]
    torch: list[Annotated[int, Field(ge=0, le=255)]]
    cuda: list[Annotated[int, Field(ge=0, le=255)]] | None = None

    @field_validator("python")
    @classmethod
    def _python(cls, v: tuple) -> tuple:
        if len(v[1]) != 625:
            raise ValueError(f"needs 625 state words, has {len(v[1])}")
        return v

    @field_validator("numpy")
    @classmethod
    def _numpy(cls, v: tuple) -> tuple:
        if v[0] != "MT19937" or len(v[1]) != 624 or v[2] > 624:
            raise ValueError("not an MT19937 state of 624 words")
        return v

    @field_validator("torch")
    @classmethod
    def _torch(cls, v: list[int]) -> list[int]:
        if len(v) != TORCH_CPU_RNG_BYTES:
            raise ValueError(f"needs {TORCH_CPU_RNG_BYTES} bytes, has {len(v)}")
        return v


class WindowState(BaseModel):
    """One process's running metrics window at the checkpoint (``Trainer``'s ``Window``): the
    sums and counts of each logged key since the last metrics row, carried over a resume."""

    model_config = ConfigDict(extra="forbid")
    sums: dict[str, Annotated[float, Field(strict=True)]]
    counts: dict[str, Annotated[int, Field(gt=0, strict=True)]]

    @model_validator(mode="after")
    def _same_keys(self) -> WindowState:
        if self.sums.keys() != self.counts.keys():
            raise ValueError("sums and counts name different keys")
        return self


class CheckpointState(BaseModel):
    """``state.json``: what resume, sampling and import rely on; other keys are kept as given."""

    model_config = ConfigDict(extra="allow")
    step: NonNegInt
    epoch: NonNegInt
    offset: NonNegInt
    rng: list[RngState]
    files: dict[str, Sha256] = Field(min_length=1)
    sizes: dict[str, NonNegInt] = Field(default_factory=dict)  # bytes; absent in older ones
    modules: list[str]
    extra: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    ema_updates: NonNegInt = 0
    good: bool = True
    # one per process; absent in older checkpoints (resume then restarts the window, with a note)
    metrics_window: list[WindowState] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _stats(self) -> CheckpointState:
        if self.extra.get("latent_stats") is not None:
            try:
                LatentStats.model_validate(self.extra["latent_stats"])
            except ValidationError as e:
                raise ValueError(f"extra.latent_stats: {_first(e)}") from None
        return self


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def validate_state(data: Any, path: Path) -> CheckpointState:
    """``state.json`` contents → ``CheckpointState``; a bad field is a one-line error naming it."""
    try:
        return CheckpointState.model_validate(data)
    except ValidationError as e:
        raise CheckpointError(
            f"{path} is malformed: {_first(e)}", "use another checkpoint of the run"
        ) from None


def validate_latent_stats(data: Any, path: Path) -> dict[str, Any]:
    """A ``{mean, std}`` document (``latent_stats.json``) checked as ``LatentStats``."""
    try:
        LatentStats.model_validate(data)
    except ValidationError as e:
        raise CheckpointError(
            f"{path} is malformed: {_first(e)}", "rerun `repackctl pack encode`"
        ) from None
    return data
