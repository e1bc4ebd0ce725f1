"""Linear-path transport: interpolant, t sampling, loss, samplers on an analytic flow, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from repackctl.errors import ConfigError
from repackctl.transport.guidance import AutoGuidance, ClassifierFreeGuidance
from repackctl.transport.interpolant import (
    data_from_velocity,
    interpolate,
    noise_from_velocity,
    score_from_velocity,
    their_interval_start_to_our_t_hi,
    their_shift_to_ours,
    their_time_to_ours,
    velocity_target,
)
from repackctl.transport.loss import velocity_loss
from repackctl.transport.samplers import (
    SamplerSpec,
    sample,
    sample_ode,
    sample_sde,
    time_grid,
)
from repackctl.transport.timesteps import TimeSampler, shift_time

MEAN, STD = 1.5, 0.5  # data distribution N(MEAN, STD² I)


def gaussian_velocity(x, t, y=None):
    """Exact velocity E[ε − x₀ | x_t] of the linear path for x₀ ~ N(MEAN, STD²), ε ~ N(0, 1).

    x_t ~ N(a·m, V) with a = 1 − t, V = a²s² + t²; Cov(ε − x₀, x_t) = t − a·s², so
    v = −m + (t − a·s²)/V · (x_t − a·m).
    """
    tt = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    a = 1 - tt
    var = a**2 * STD**2 + tt**2
    return -MEAN + (tt - a * STD**2) / var * (x - a * MEAN)


def _noise(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Interpolant and conversions
# ---------------------------------------------------------------------------------------------


def test_interpolant_endpoints_and_inversions():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = interpolate(x, eps, t)
    torch.testing.assert_close(xt[0], x[0])
    torch.testing.assert_close(xt[2], eps[2])
    v = velocity_target(x, eps)
    # The path is straight: x_t moves with velocity ε − x.
    dt = 1e-3
    torch.testing.assert_close((interpolate(x, eps, t + dt) - xt) / dt, v, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(data_from_velocity(xt, v, t), x, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(noise_from_velocity(xt, v, t), eps, atol=1e-6, rtol=1e-5)


def test_score_from_velocity_matches_gaussian_score():
    x = torch.randn(5, 2, 4, 4)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.95])
    tt = t.reshape(-1, 1, 1, 1)
    a = 1 - tt
    exact = -(x - a * MEAN) / (a**2 * STD**2 + tt**2)
    torch.testing.assert_close(score_from_velocity(x, gaussian_velocity(x, t), t), exact)


def test_conversions_from_the_opposite_convention():
    assert their_shift_to_ours(0.3) == pytest.approx(1 / 0.3)
    assert their_interval_start_to_our_t_hi(0.11) == pytest.approx(0.89)
    assert their_time_to_ours(0.25) == 0.75
    # Their shift applied in their time τ = 1 − t equals ours with 1/s in our time.
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    theirs = 1 - shift_time(1 - t, 0.3)
    torch.testing.assert_close(theirs, shift_time(t, their_shift_to_ours(0.3)))
    with pytest.raises(ConfigError):
        their_shift_to_ours(0.0)


# ---------------------------------------------------------------------------------------------
# Time sampling
# ---------------------------------------------------------------------------------------------


def test_shift_formula():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_time(t, 3.0), 3 * t / (1 + 2 * t))
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert torch.equal(shift_time(t, 1.0), t)
    with pytest.raises(ConfigError):
        shift_time(t, -1.0)


def test_time_samplers_ranges_and_determinism():
    n = 20_000
    uni = TimeSampler("uniform").sample(n, generator=torch.Generator().manual_seed(0))
    assert uni.shape == (n,) and uni.min() >= 0 and uni.max() < 1
    assert abs(uni.mean().item() - 0.5) < 0.01
    ln = TimeSampler("logit_normal", mu=0.5, sigma=1.0)
    a = ln.sample(n, generator=torch.Generator().manual_seed(1))
    b = ln.sample(n, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() > 0 and a.max() < 1
    assert a.median().item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=0.01)
    shifted = TimeSampler("uniform", shift=3.0).sample(
        n, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(shifted, shift_time(uni, 3.0))
    assert shifted.mean() > uni.mean() + 0.1  # s > 1 moves mass toward noise
    with pytest.raises(ConfigError):
        TimeSampler("beta")


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def test_velocity_loss_zero_for_exact_velocity():
    x, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    target = velocity_target(x, eps)
    out = velocity_loss(target.clone(), target, cos_weight=1.0)
    assert out.per_sample.shape == (4,)
    assert out.mean.item() == pytest.approx(0.0, abs=1e-6)
    # Twice the target: MSE = mean(v²) per sample, direction term 0.
    double = velocity_loss(2 * target, target, cos_weight=1.0)
    torch.testing.assert_close(double.mse, target.pow(2).flatten(1).mean(1))
    torch.testing.assert_close(double.cos, torch.zeros(4), atol=1e-6, rtol=0)
    # Opposite direction: 1 − cos = 2 at every position.
    opposite = velocity_loss(-target, target, cos_weight=0.5)
    torch.testing.assert_close(opposite.cos, torch.full((4,), 2.0))
    torch.testing.assert_close(opposite.per_sample, opposite.mse + 1.0)
    assert opposite.mean.item() == pytest.approx(opposite.per_sample.mean().item())
    with pytest.raises(ConfigError):
        velocity_loss(target[:, :2], target)


# ---------------------------------------------------------------------------------------------
# Samplers on the analytic Gaussian flow
# ---------------------------------------------------------------------------------------------


def test_time_grid_runs_from_noise_to_data_with_shift():
    grid = time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0
    assert (shifted[1:-1] > grid[1:-1]).all()  # more of the grid spent near noise


def test_ode_samplers_reach_the_gaussian_and_heun_beats_euler():
    noise = _noise(512)
    # The exact flow maps ε to MEAN + STD·ε (monotone transport between Gaussians).
    exact = MEAN + STD * noise
    err: dict[tuple[str, int], float] = {}
    for method in ("euler", "heun"):
        for steps in (8, 16, 32):
            res = sample_ode(gaussian_velocity, noise, steps=steps, method=method)
            assert res.nfe == (steps if method == "euler" else 2 * steps)
            err[method, steps] = (res.x - exact).abs().max().item()
        assert res.x.mean().item() == pytest.approx(MEAN + STD * noise.mean().item(), abs=0.01)
        assert res.x.std().item() == pytest.approx(STD * noise.std().item(), rel=0.06)
    for steps in (8, 16, 32):
        assert err["heun", steps] < err["euler", steps] / 10
    # Orders of convergence: halving the step halves Euler's error and quarters Heun's.
    assert 1.6 < err["euler", 16] / err["euler", 32] < 2.5
    assert err["heun", 16] / err["heun", 32] > 3.0


def test_heun_final_euler_and_shift_options():
    noise = _noise(64)
    res = sample_ode(gaussian_velocity, noise, steps=10, method="heun", heun_final_euler=True)
    assert res.nfe == 19
    exact = MEAN + STD * noise
    shifted = sample_ode(gaussian_velocity, noise, steps=10, method="heun", shift=3.0)
    assert shifted.times[1] > 0.9
    assert (shifted.x - exact).abs().max() < 0.05
    with pytest.raises(ConfigError):
        sample_ode(gaussian_velocity, noise, steps=0)
    with pytest.raises(ConfigError):
        sample_ode(gaussian_velocity, noise, steps=4, method="rk4")


@pytest.mark.parametrize("last_step", ["mean", "euler"])
def test_sde_sampler_reaches_the_gaussian(last_step: str):
    noise = _noise(2000)  # 64k scalars
    res = sample_sde(
        gaussian_velocity,
        noise,
        steps=100,
        last_step=last_step,
        generator=torch.Generator().manual_seed(5),
    )
    assert res.nfe == 100
    assert res.times[-2].item() == pytest.approx(0.04) and res.times[-1] == 0
    assert res.x.mean().item() == pytest.approx(MEAN, abs=0.03)
    assert res.x.std().item() == pytest.approx(STD, rel=0.08)
    # The stochastic path really is stochastic: it does not just replay the ODE map.
    assert (res.x - (MEAN + STD * noise)).abs().mean() > 0.05


def test_sde_with_zero_diffusion_is_the_euler_ode():
    noise = _noise(16)
    sde = sample_sde(gaussian_velocity, noise, steps=12, last_step="euler", diffusion_scale=0.0)
    grid = sde.times
    # Same grid through the ODE: one Euler step per interval.
    x = noise.clone()
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        x = x + (t_next - t) * gaussian_velocity(x, torch.full((16,), t))
    torch.testing.assert_close(sde.x, x)


def test_per_sample_generators_make_sde_noise_batch_independent():
    noise = _noise(4)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    full = sample_sde(gaussian_velocity, noise, steps=5, generator=gens([10, 11, 12, 13]))
    part = sample_sde(gaussian_velocity, noise[2:], steps=5, generator=gens([12, 13]))
    torch.testing.assert_close(full.x[2:], part.x)
    with pytest.raises(ConfigError):
        sample_sde(gaussian_velocity, noise, steps=5, generator=gens([1, 2]))


def test_sampler_spec_dispatches_and_records():
    noise = _noise(8)
    spec = SamplerSpec(kind="heun", steps=6, shift=2.0)
    res = sample(spec, gaussian_velocity, noise)
    assert res.nfe == 12
    torch.testing.assert_close(
        res.x, sample_ode(gaussian_velocity, noise, steps=6, method="heun", shift=2.0).x
    )
    assert spec.to_dict()["kind"] == "heun"
    sde = sample(SamplerSpec(kind="sde", steps=7), gaussian_velocity, noise)
    assert sde.nfe == 7
    with pytest.raises(ConfigError):
        SamplerSpec(kind="dpm")


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------

NULL = 10


class Recorder:
    """A class-conditional velocity function that records the batches it was called with."""

    def __init__(self, offset: float = 0.0) -> None:
        self.batches: list[int] = []
        self.offset = offset

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        # Depends on x, t and (differently per channel) on the label.
        lab = (y.float() + 1).reshape(-1, 1, 1, 1)
        chan = torch.arange(x.shape[1], dtype=x.dtype).reshape(1, -1, 1, 1) + 1
        return x * 0.5 + t.reshape(-1, 1, 1, 1) + lab * chan + self.offset


def _guidance_inputs(b: int = 3):
    x = torch.randn(b, 4, 2, 2)
    y = torch.tensor([0, 3, 7])[:b]
    return x, y


def test_cfg_scale_one_is_exactly_conditional():
    f = Recorder()
    x, y = _guidance_inputs()
    t = torch.full((3,), 0.5)
    out = ClassifierFreeGuidance(f, scale=1.0, null_label=NULL)(x, t, y)
    assert torch.equal(out, Recorder()(x, t, y))
    assert f.batches == [3]  # no unconditional rows evaluated


def test_cfg_formula_in_one_batched_forward():
    f = Recorder()
    x, y = _guidance_inputs()
    t = torch.full((3,), 0.5)
    cfg = ClassifierFreeGuidance(f, scale=4.0, null_label=NULL)
    out = cfg(x, t, y)
    assert f.batches == [6]  # conditional and unconditional concatenated
    cond, uncond = Recorder()(x, t, y), Recorder()(x, t, torch.full_like(y, NULL))
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond))
    assert cfg.calls == 1
    with pytest.raises(ConfigError):
        cfg(x, t, None)


def test_cfg_interval_switches_guidance_off_outside():
    x, y = _guidance_inputs()
    cfg = ClassifierFreeGuidance(Recorder(), scale=4.0, null_label=NULL, t_hi=0.89)
    outside = torch.full((3,), 0.95)
    assert torch.equal(cfg(x, outside, y), Recorder()(x, outside, y))
    inside = torch.full((3,), 0.89)
    assert not torch.allclose(cfg(x, inside, y), Recorder()(x, inside, y))
    # Per-sample times: only the rows inside the interval are guided.
    mixed = torch.tensor([0.2, 0.95, 0.5])
    out = cfg(x, mixed, y)
    cond = Recorder()(x, mixed, y)
    torch.testing.assert_close(out[1], cond[1])
    assert not torch.allclose(out[0], cond[0])
    with pytest.raises(ConfigError):
        ClassifierFreeGuidance(Recorder(), scale=2.0, null_label=NULL, t_lo=0.9, t_hi=0.1)


def test_cfg_legacy_channels_guides_only_the_first_k():
    x, y = _guidance_inputs()
    t = torch.full((3,), 0.5)
    legacy = ClassifierFreeGuidance(Recorder(), scale=3.0, null_label=NULL, legacy_channels=3)
    full = ClassifierFreeGuidance(Recorder(), scale=3.0, null_label=NULL)
    out, guided, cond = legacy(x, t, y), full(x, t, y), Recorder()(x, t, y)
    torch.testing.assert_close(out[:, :3], guided[:, :3])
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    assert not torch.allclose(guided[:, 3:], cond[:, 3:])


def test_autoguidance_uses_the_weaker_model_as_guide():
    x, y = _guidance_inputs()
    t = torch.full((3,), 0.5)
    main, guide = Recorder(), Recorder(offset=1.0)
    ag = AutoGuidance(main, guide, scale=2.5, t_hi=0.7)
    v_main, v_guide = Recorder()(x, t, y), Recorder(offset=1.0)(x, t, y)
    torch.testing.assert_close(ag(x, t, y), v_guide + 2.5 * (v_main - v_guide))
    assert main.batches == [3] and guide.batches == [3]
    late = torch.full((3,), 0.9)
    assert torch.equal(ag(x, late, y), Recorder()(x, late, y))
    assert guide.batches == [3]  # the guide is not evaluated outside the interval


def test_guided_sampling_counts_one_nfe_per_step():
    f = Recorder()
    x, y = _guidance_inputs()
    cfg = ClassifierFreeGuidance(f, scale=2.0, null_label=NULL, t_hi=0.5)
    res = sample_ode(cfg, x, y, steps=4, method="euler")
    assert res.nfe == 4 == cfg.calls
    # Grid 1, .75, .5, .25: the first two steps are unguided (3 rows), the last two guided (6).
    assert f.batches == [3, 3, 6, 6]
    assert math.isfinite(res.x.abs().sum().item())


def test_cosine_term_gradient_is_bounded_at_zero_prediction():
    # adaLN-Zero models start by predicting exactly 0; the cosine term must not explode there
    from repackctl.transport.loss import velocity_loss as vl

    target = torch.randn(4, 32, 8, 8)
    pred = torch.zeros_like(target, requires_grad=True)
    vl(pred, target, cos_weight=1.0).mean.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.norm() < 10.0
    other = torch.randn_like(target)
    plain = 1 - torch.nn.functional.cosine_similarity(other, target, dim=1)
    torch.testing.assert_close(vl(other, target, 1.0).cos, plain.flatten(1).mean(1))
