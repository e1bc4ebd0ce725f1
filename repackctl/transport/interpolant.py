"""The linear interpolant of flow matching / rectified flow and its conversions.

Follows Lipman et al. 2023 / Liu et al. 2023 and SiT (Ma et al. 2024, ``transport/path.py``,
``ICPlan``) in our time convention (REPA, RAE): ``x_t = (1 − t)·x + t·ε`` with t = 0 data and
t = 1 noise, so α_t = 1 − t, σ_t = t and the velocity is ``v = dx_t/dt = ε − x``.

From a velocity v at (x_t, t) the other parametrisations follow exactly:

    x̂ = x_t − t·v            (data prediction)
    ε̂ = x_t + (1 − t)·v      (noise prediction)
    ∇log p_t(x_t) = −ε̂ / t = −(x_t − (1 − t)·x̂) / t²     (score, Tweedie)

SiT, LightningDiT and the official RePack code run time the other way (τ = 1 − t, τ = 0 noise)
and predict ``x − ε = −v``. Their timestep shift ``τ' = sτ/(1 + (s − 1)τ)`` applied in τ equals
ours with ``1/s`` applied in t; their "no guidance for τ < a" means guidance for t ≤ 1 − a.
"""

from __future__ import annotations

from torch import Tensor

from repackctl.errors import ConfigError


def expand_t(t: Tensor, like: Tensor) -> Tensor:
    """(B,) times → (B, 1, …, 1) broadcastable against a (B, …) tensor."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 − t)·x + t·ε for data x (B, …), noise ε (B, …) and t (B,)."""
    tt = expand_t(t, x)  # (B, 1, 1, 1)
    return (1 - tt) * x + tt * noise  # (B, C, h, w)


def velocity_target(x: Tensor, noise: Tensor) -> Tensor:
    """dx_t/dt = ε − x (independent of t for the linear path)."""
    return noise - x  # (B, C, h, w)


def data_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """x̂ = x_t − t·v."""
    return x_t - expand_t(t, x_t) * v  # (B, C, h, w)


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """ε̂ = x_t + (1 − t)·v."""
    return x_t + (1 - expand_t(t, x_t)) * v  # (B, C, h, w)


def score_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """∇log p_t(x_t) = −ε̂ / t (undefined at t = 0, where the sampler never asks for it)."""
    return -noise_from_velocity(x_t, v, t) / expand_t(t, x_t)  # (B, C, h, w)


# ---------------------------------------------------------------------------------------------
# Conversions with the opposite time convention (SiT / LightningDiT / official RePack)
# ---------------------------------------------------------------------------------------------


def their_time_to_ours(tau: float) -> float:
    """Their τ (0 noise, 1 data) → our t (0 data, 1 noise)."""
    return 1.0 - tau


def our_time_to_theirs(t: float) -> float:
    """Our t → their τ."""
    return 1.0 - t


def their_shift_to_ours(shift: float) -> float:
    """Their timestep shift s (applied in τ) equals ours 1/s (applied in t); e.g. 0.3 → 3.33."""
    if shift <= 0:
        raise ConfigError(f"timestep shift {shift} must be > 0", hint="1 means no shift")
    return 1.0 / shift


def our_shift_to_theirs(shift: float) -> float:
    """Inverse of ``their_shift_to_ours``."""
    return their_shift_to_ours(shift)


def their_interval_start_to_our_t_hi(start: float) -> float:
    """Their ``cfg_interval_start`` a (no guidance for τ < a) → our upper bound t_hi = 1 − a."""
    if not 0.0 <= start <= 1.0:
        raise ConfigError(f"guidance interval start {start} is not in [0, 1]", hint="e.g. 0.11")
    return 1.0 - start
