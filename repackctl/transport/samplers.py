"""ODE and SDE samplers for the linear path, over any velocity function ``f(x, t, y) -> v``.

Time runs from t = 1 (noise) to t = 0 (data). Each sampler counts the calls of ``f`` it made
(NFE) and returns them with the time grid, so a protocol card can report them. A guided
function (``repackctl.transport.guidance``) evaluates conditional and unconditional branches in
one batched call, which counts as one NFE here.

ODE (probability flow): dx/dt = v(x, t). Euler and Heun (Karras et al. 2022, Alg. 1; REPA
``samplers.py`` ``euler_sampler``) on the grid ``shift(linspace(1, 0, steps + 1))``.

SDE (REPA ``euler_maruyama_sampler``; SiT ``transport/integrators.py``). Derivation for
x_t = (1 − t)·x + t·ε with a velocity model:

1. The marginals p_t follow the continuity equation ∂p/∂t = −∇·(p v).
2. For any g(t) ≥ 0, the forward SDE dx = [v + ½g²∇log p_t] dt + g dW has the same marginals:
   its Fokker–Planck equation adds −½g²∇·(p∇log p) + ½g²Δp = 0 to the continuity equation.
3. Its time reversal (Anderson 1982), run from t = 1 down to 0, is
   dx = [v − ½g²∇log p_t] dt + g dW̄   (dt < 0).
4. The score comes from the velocity (``interpolant``): ε̂ = x_t + (1 − t)·v,
   ∇log p_t = −ε̂/t = −(x_t − (1 − t)·x̂)/t² with x̂ = x_t − t·v.
5. With REPA's diffusion g²(t) = 2λt (λ = ``diffusion_scale``, 1 upstream) the 1/t cancels:
   drift d = v + λ·ε̂, and one Euler–Maruyama step of size dt = t_next − t < 0 is
   x ← x + d·dt + √(2λt·|dt|)·z,  z ~ N(0, I).
   λ = 0 gives back the Euler ODE sampler.

The SDE grid is ``shift(linspace(1, t_last, steps))`` followed by 0: ``steps − 1``
Euler–Maruyama steps, then one last step from t_last to 0 that is either the transition's mean
``x + d·dt`` (``"mean"``, REPA) or the ODE step ``x − t·v = x̂`` (``"euler"``).
Every sampler takes ``steps`` = number of updates = NFE; the official RePack/LightningDiT
"250 steps" is a 250-point grid, i.e. ``steps=249`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from repackctl.errors import ConfigError
from repackctl.transport.timesteps import shift_time

VelocityFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""f(x (B, C, h, w), t (B,), y (B,) or None) -> v (B, C, h, w)."""


@dataclass(frozen=True)
class SampleResult:
    """Samples (B, C, h, w) at t = 0, the number of velocity calls, and the time grid used."""

    x: Tensor
    nfe: int
    times: Tensor


class _Counted:
    """Wraps a velocity function: casts to the integration dtype and counts calls."""

    def __init__(self, f: VelocityFn, y: Tensor | None) -> None:
        self.f, self.y, self.calls = f, y, 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        self.calls += 1
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # (B,)
        return self.f(x, tt, self.y).to(x.dtype)  # (B, C, h, w)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ConfigError(f"steps={steps} must be ≥ 1", hint="e.g. --steps 50")


def _state(noise: Tensor) -> Tensor:
    # Integrate in at least float32: many small updates in bf16 would lose the step sizes.
    dtype = torch.promote_types(noise.dtype, torch.float32)
    return noise.to(dtype)


def time_grid(steps: int, shift: float = 1.0, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Descending grid of ``steps + 1`` times, shift applied to a uniform grid (float64)."""
    _check_steps(steps)
    uniform = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)  # (steps+1,)
    return shift_time(uniform, shift)


def sampler_times(spec: SamplerSpec) -> Tensor:
    """The ``steps + 1`` descending times (float64) the sampler of ``spec`` steps between: the
    ODE grid ``time_grid``, or the SDE's ``shift(linspace(1, t_last, steps))`` followed by 0."""
    if spec.kind != "sde":
        return time_grid(spec.steps, spec.shift)
    grid = shift_time(torch.linspace(1.0, spec.t_last, spec.steps, dtype=torch.float64), spec.shift)
    return torch.cat([grid, grid.new_zeros(1)])  # (steps+1,)


def stalled_steps(times: Tensor) -> list[int]:
    """The steps i (0-based) of the descending grid ``times`` that do not move in float32, the
    dtype the state and the model's time are in (``_state``, ``_Counted``): a time that is not
    finite, or a next time not below it. A timestep shift far from 1 rounds every time to 1 (or
    to 0), so "50 steps" are one Euler jump."""
    t = times.to(torch.float32)  # (steps+1,)
    moves = torch.isfinite(t[:-1]) & torch.isfinite(t[1:]) & (t[1:] < t[:-1])  # (steps,)
    return [int(i) for i in torch.nonzero(~moves).flatten()]


def sample_ode(
    f: VelocityFn,
    noise: Tensor,
    y: Tensor | None = None,
    *,
    steps: int,
    method: Literal["euler", "heun"] = "euler",
    shift: float = 1.0,
    heun_final_euler: bool = False,
) -> SampleResult:
    """Integrate dx/dt = f(x, t, y) from t = 1 (x = noise) to t = 0.

    Euler: 1 NFE per step. Heun (trapezoidal correction): 2 NFE per step; with
    ``heun_final_euler`` the last step skips the correction as REPA/EDM do (2·steps − 1 NFE).
    """
    if method not in ("euler", "heun"):
        raise ConfigError(f"unknown ODE method {method!r}", hint="use 'euler' or 'heun'")
    times = time_grid(steps, shift)  # (steps+1,)
    fn = _Counted(f, y)
    x = _state(noise)  # (B, C, h, w)
    for i in range(steps):
        t, t_next = float(times[i]), float(times[i + 1])
        dt = t_next - t  # < 0
        d1 = fn(x, t)  # (B, C, h, w)
        x_euler = x + dt * d1  # (B, C, h, w)
        if method == "euler" or (heun_final_euler and i == steps - 1):
            x = x_euler
        else:
            d2 = fn(x_euler, t_next)  # (B, C, h, w)
            x = x + dt * 0.5 * (d1 + d2)  # (B, C, h, w)
    return SampleResult(x=x, nfe=fn.calls, times=times)


def _randn(like: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """Standard normal noise shaped like ``like``; a sequence gives one generator per sample,
    so each sample's noise is the same whatever the batch it is drawn in."""
    if generator is None:
        return torch.randn_like(like)
    if isinstance(generator, torch.Generator):
        z = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
        return z.to(like.device)  # (B, C, h, w)
    if len(generator) != like.shape[0]:
        raise ConfigError(
            f"{len(generator)} generators for a batch of {like.shape[0]}",
            hint="pass one torch.Generator per sample, or a single one",
        )
    rows = [
        torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype).to(like.device)
        for g in generator
    ]
    return torch.stack(rows)  # (B, C, h, w)


def sample_sde(
    f: VelocityFn,
    noise: Tensor,
    y: Tensor | None = None,
    *,
    steps: int,
    shift: float = 1.0,
    t_last: float = 0.04,
    last_step: Literal["mean", "euler"] = "mean",
    diffusion_scale: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> SampleResult:
    """Euler–Maruyama on the reverse SDE with g²(t) = 2λt (derivation in the module docstring).

    ``steps`` updates in total (= NFE): ``steps − 1`` stochastic ones on
    ``shift(linspace(1, t_last, steps))``, then the deterministic ``last_step`` to t = 0.
    """
    _check_steps(steps)
    if not 0.0 < t_last < 1.0:
        raise ConfigError(f"t_last={t_last} must lie in (0, 1)", hint="REPA uses 0.04")
    if last_step not in ("mean", "euler"):
        raise ConfigError(f"unknown last step {last_step!r}", hint="use 'mean' or 'euler'")
    if diffusion_scale < 0:
        raise ConfigError(f"diffusion_scale={diffusion_scale} must be ≥ 0", hint="1 is REPA's")
    grid = shift_time(torch.linspace(1.0, t_last, steps, dtype=torch.float64), shift)  # (steps,)
    times = torch.cat([grid, grid.new_zeros(1)])  # (steps+1,)
    lam = diffusion_scale
    fn = _Counted(f, y)
    x = _state(noise)  # (B, C, h, w)
    for i in range(steps - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        dt = t_next - t  # < 0
        v = fn(x, t)  # (B, C, h, w)
        eps_hat = x + (1 - t) * v  # (B, C, h, w)
        drift = v + lam * eps_hat  # (B, C, h, w) = v − ½g²·score
        z = _randn(x, generator)  # (B, C, h, w)
        x = x + drift * dt + (2 * lam * t * abs(dt)) ** 0.5 * z  # (B, C, h, w)
    t = float(times[-2])
    v = fn(x, t)  # (B, C, h, w)
    if last_step == "mean":
        x = x - t * (v + lam * (x + (1 - t) * v))  # (B, C, h, w) mean of the last transition
    else:
        x = x - t * v  # (B, C, h, w) ODE step to t = 0, i.e. x̂
    return SampleResult(x=x, nfe=fn.calls, times=times)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and all its settings, as reported on a protocol card."""

    kind: Literal["euler", "heun", "sde"] = "euler"
    steps: int = 50
    shift: float = 1.0  # ours (their shift s is 1/s here)
    heun_final_euler: bool = False
    t_last: float = 0.04  # SDE only
    last_step: Literal["mean", "euler"] = "mean"  # SDE only
    diffusion_scale: float = 1.0  # SDE only

    def __post_init__(self) -> None:
        if self.kind not in ("euler", "heun", "sde"):
            raise ConfigError(f"unknown sampler {self.kind!r}", hint="use 'euler', 'heun' or 'sde'")
        _check_steps(self.steps)
        if self.shift <= 0:
            raise ConfigError(f"shift {self.shift} must be > 0", hint="1 means no shift")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample(
    spec: SamplerSpec,
    f: VelocityFn,
    noise: Tensor,
    y: Tensor | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> SampleResult:
    """Run the sampler described by ``spec`` (the generator only matters for the SDE)."""
    if spec.kind == "sde":
        return sample_sde(
            f,
            noise,
            y,
            steps=spec.steps,
            shift=spec.shift,
            t_last=spec.t_last,
            last_step=spec.last_step,
            diffusion_scale=spec.diffusion_scale,
            generator=generator,
        )
    return sample_ode(
        f,
        noise,
        y,
        steps=spec.steps,
        method=spec.kind,
        shift=spec.shift,
        heun_final_euler=spec.heun_final_euler,
    )
