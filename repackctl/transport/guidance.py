"""Guidance: classifier-free guidance and autoguidance as velocity functions.

- Classifier-free guidance (Ho & Salimans 2022): v = v_u + s·(v_c − v_u), with the conditional
  and unconditional (null class) branches evaluated in ONE batched call of the base function.
- Guidance interval (Kynkäänniemi et al. 2024; REPA, LightningDiT): guidance only for
  t_lo ≤ t ≤ t_hi in our time; elsewhere the conditional velocity alone (and only the B
  conditional rows are evaluated). LightningDiT/RePack's ``cfg_interval_start a`` is
  ``t_hi = 1 − a`` (``interpolant.their_interval_start_to_our_t_hi``).
- Legacy first-k channels: DiT, LightningDiT and the official RePack code guide only channels
  0..2 "for exact reproducibility"; ``legacy_channels=3`` reproduces that, the default guides all.
- Autoguidance (Karras et al. 2024; RAE): a weaker model of the same task is the guide,
  v = v_guide + s·(v_main − v_guide), both evaluated on the same labels.

Each guide is a ``VelocityFn`` itself, so any sampler in ``samplers`` takes it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from repackctl.errors import ConfigError
from repackctl.transport.samplers import VelocityFn


def _check_interval(t_lo: float, t_hi: float) -> None:
    if not 0.0 <= t_lo <= t_hi <= 1.0:
        raise ConfigError(
            f"guidance interval [{t_lo}, {t_hi}] is not inside [0, 1] in increasing order",
            hint="our time: 0 data, 1 noise; their interval start 0.11 is t_hi = 0.89",
        )


def _active(t: Tensor, t_lo: float, t_hi: float) -> Tensor:
    return (t >= t_lo) & (t <= t_hi)  # (B,) bool


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], *([1] * (like.ndim - 1)))  # (B, 1, 1, 1)


@dataclass
class ClassifierFreeGuidance:
    """Velocity function ``v_u + s·(v_c − v_u)`` built from a class-conditional one.

    ``calls`` counts calls of the base function (each is one batched forward).
    """

    f: VelocityFn
    scale: float
    null_label: int
    t_lo: float = 0.0
    t_hi: float = 1.0
    legacy_channels: int | None = None  # guide only channels [0, k) (DiT/LightningDiT parity)
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        _check_interval(self.t_lo, self.t_hi)
        if self.legacy_channels is not None and self.legacy_channels < 1:
            raise ConfigError(
                f"legacy_channels={self.legacy_channels} must be ≥ 1 or None",
                hint="None guides all channels; 3 reproduces DiT/LightningDiT/RePack",
            )

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise ConfigError(
                "classifier-free guidance needs class labels",
                hint="pass labels, or sample with guidance scale 1",
            )
        active = _active(t, self.t_lo, self.t_hi)  # (B,)
        self.calls += 1
        if self.scale == 1.0 or not bool(active.any()):
            # Exactly the conditional velocity; no unconditional rows are evaluated.
            return self.f(x, t, y)  # (B, C, h, w)
        b = x.shape[0]
        null = torch.full_like(y, self.null_label)  # (B,)
        both = self.f(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, h, w)
        cond, uncond = both[:b], both[b:]  # 2 × (B, C, h, w)
        guided = uncond + self.scale * (cond - uncond)  # (B, C, h, w)
        if self.legacy_channels is not None:
            k = self.legacy_channels
            guided = torch.cat([guided[:, :k], cond[:, k:]], dim=1)  # (B, C, h, w)
        return torch.where(_expand(active, guided), guided, cond)  # (B, C, h, w)


@dataclass
class AutoGuidance:
    """Velocity function ``v_guide + s·(v_main − v_guide)`` with a weaker guide model."""

    main: VelocityFn
    guide: VelocityFn
    scale: float
    t_lo: float = 0.0
    t_hi: float = 1.0
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        _check_interval(self.t_lo, self.t_hi)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        active = _active(t, self.t_lo, self.t_hi)  # (B,)
        self.calls += 1
        v_main = self.main(x, t, y)  # (B, C, h, w)
        if self.scale == 1.0 or not bool(active.any()):
            return v_main
        v_guide = self.guide(x, t, y)  # (B, C, h, w)
        guided = v_guide + self.scale * (v_main - v_guide)  # (B, C, h, w)
        return torch.where(_expand(active, guided), guided, v_main)  # (B, C, h, w)
