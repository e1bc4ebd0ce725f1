"""Training-time sampling of t and the timestep shift.

- uniform t ~ U(0, 1) (SiT, REPA default);
- logit-normal t = sigmoid(μ + σ·n), n ~ N(0, 1) (Esser et al. 2024, SD3; LightningDiT and the
  official RePack stage 2 with μ = 0, σ = 1);
- optional shift t' = s·t / (1 + (s − 1)·t) (SD3 §5.3.2; RAE uses s = √(dim/4096)); s > 1
  moves mass toward t = 1 (noise). The shift is symmetric in t ↔ 1 − t with s ↔ 1/s, so it
  reads the same in the opposite convention with the reciprocal s (see ``interpolant``).

Every draw takes an optional ``torch.Generator`` so training is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from repackctl.errors import ConfigError


def shift_time(t: Tensor, shift: float) -> Tensor:
    """t' = s·t / (1 + (s − 1)·t): monotone on [0, 1], fixes 0 and 1; s = 1 is the identity."""
    if shift <= 0:
        raise ConfigError(f"timestep shift {shift} must be > 0", hint="1 means no shift")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class TimeSampler:
    """Distribution of training times t ∈ [0, 1] (ours: 0 data, 1 noise)."""

    kind: Literal["uniform", "logit_normal"] = "uniform"
    mu: float = 0.0  # logit-normal location
    sigma: float = 1.0  # logit-normal scale
    shift: float = 1.0  # applied after drawing

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "logit_normal"):
            raise ConfigError(
                f"unknown time distribution {self.kind!r}", hint="use 'uniform' or 'logit_normal'"
            )
        if self.sigma <= 0 or self.shift <= 0:
            raise ConfigError(
                f"sigma {self.sigma} and shift {self.shift} must be > 0",
                hint="sigma 1 and shift 1 are the defaults",
            )

    def sample(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw (B,) float32 times; the generator's device is used when ``device`` is None."""
        if device is None and generator is not None:
            device = generator.device
        if self.kind == "uniform":
            t = torch.rand(batch, generator=generator, device=device)  # (B,)
        else:
            n = torch.randn(batch, generator=generator, device=device)  # (B,)
            t = torch.sigmoid(self.mu + self.sigma * n)  # (B,)
        return shift_time(t, self.shift)  # (B,)
