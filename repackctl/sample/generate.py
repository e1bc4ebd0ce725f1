"""Guided sampling of raw DiT latents: velocity of a model, CFG, the ODE/SDE loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import DataError, name_items
from repackctl.pack.load import denormalise
from repackctl.runtime import amp_autocast
from repackctl.sample.plan import OFFICIAL_VELOCITY, GenerationPlan, index_generators, initial_noise
from repackctl.transport.guidance import AutoGuidance, ClassifierFreeGuidance
from repackctl.transport.samplers import VelocityFn, sample


def model_velocity(
    model: torch.nn.Module, extra: dict[str, Any], precision: str = "fp32"
) -> VelocityFn:
    """The DiT as a ``VelocityFn`` in our convention (wrapping official-convention models),
    autocast to ``precision`` (``runtime.amp_autocast``; fp32: none)."""
    official = extra.get("velocity_convention") == OFFICIAL_VELOCITY
    device = next(model.parameters()).device

    def f(x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        with amp_autocast(precision, device):
            if official:
                # theirs: τ = 1 − t (τ = 1 data) and v_theirs = x − ε = −v_ours
                return -model(x, 1.0 - t, y).float()  # (B, d, h, w)
            return model(x, t, y).float()  # (B, d, h, w)

    return f


def guided_velocity(
    main: VelocityFn, plan: GenerationPlan, null_label: int, guide: VelocityFn | None
) -> VelocityFn:
    """CFG (or autoguidance with ``guide``) per ``plan``; the plain model at scale 1."""
    if guide is not None:
        return AutoGuidance(main, guide, plan.cfg, plan.t_lo, plan.t_hi)
    if not plan.guided:
        return main
    return ClassifierFreeGuidance(
        main, plan.cfg, null_label, plan.t_lo, plan.t_hi, plan.legacy_channels or None
    )


def generate_raw_latents(
    velocity: VelocityFn,
    plan: GenerationPlan,
    extra: dict[str, Any],
    labels: np.ndarray,
    seed: int,
    indices: list[int],
    device: torch.device,
) -> Tensor:
    """Raw packed latents (B, d, h, w) of samples ``indices``, each from its own generator."""
    shape = tuple(int(s) for s in extra["latent_shape"])
    gens = index_generators(seed, indices)
    noise = initial_noise(gens, shape).to(device)  # (B, d, h, w)
    y = torch.from_numpy(labels[indices]).to(device)  # (B,)
    out = sample(plan.spec, velocity, noise, y, generator=gens)
    return denormalise(out.x.float(), extra["latent_stats"])  # (B, d, h, w)


def refuse_non_finite(x: Tensor, what: str, indices: list[int], precision: str, cfg: float) -> None:
    """Refuse a batch ``x`` (B, ...) of samples ``indices`` with a NaN or inf value, naming the
    samples: written out, such a sample would be an all-black PNG that is then scored. The hint
    offers only what would change the numbers: a lower ``cfg`` when guidance amplifies (scale
    above 1), fp32 when sampling in another ``precision``, and the weights in any case."""
    bad = (~torch.isfinite(x.float())).flatten(1).any(dim=1)  # (B,)
    if bool(bad.any()):
        which = [i for i, b in zip(indices, bad.tolist(), strict=True) if b]
        raise DataError(
            f"the {what} of {len(which)} of {len(indices)} samples in this batch are not finite "
            f"(NaN or inf; samples {name_items(which)}): nothing of the batch was written",
            non_finite_hint(precision, cfg),
        )


def non_finite_hint(precision: str, cfg: float) -> str:
    """The remedies of a non-finite batch sampled in ``precision`` at guidance scale ``cfg``:
    "sample in fp32" was offered to runs already in fp32, which would change nothing."""
    fixes = []
    if cfg > 1.0:
        fixes.append(f"lower --cfg (a scale as large as {cfg:g} overflows)")
    if precision != "fp32":
        fixes.append(f"sample in fp32 (--precision fp32; these were sampled in {precision})")
    fixes.append("check the checkpoint's weights (`repackctl runs info RUN`)")
    if len(fixes) == 1:
        return fixes[0]
    return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 2 else " or ") + fixes[-1]
