"""Velocity-matching loss of the linear path.

MSE between predicted and target velocity (SiT ``transport.training_losses``), plus the optional
direction term ``1 − cos(v̂, v)`` over channels used by LightningDiT (``use_cosine_loss``) and the
official RePack stage 2. Both are averaged over all non-batch positions per sample, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from repackctl import kernels
from repackctl.errors import ConfigError


@dataclass(frozen=True)
class VelocityLoss:
    """Loss per sample (B,) and its batch mean; ``mse`` and ``cos`` are the parts (B,)."""

    per_sample: Tensor
    mean: Tensor
    mse: Tensor
    cos: Tensor


#: the cosine term floors |v̂| at this fraction of |v| (see velocity_loss)
COS_NORM_FLOOR = 0.01


def velocity_loss(pred: Tensor, target: Tensor, cos_weight: float = 0.0) -> VelocityLoss:
    """MSE(v̂, v) + cos_weight · (1 − cos over channels), per sample and averaged.

    pred, target: (B, C, …). ``cos_weight = 1`` is the official LightningDiT/RePack recipe.
    Exactly zero when pred equals a non-zero target.
    """
    if pred.shape != target.shape:
        raise ConfigError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape",
            hint="the model must output as many channels as its input latent",
        )
    pred, target = pred.float(), target.float()
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    # Computed even at weight 0: it is cheap and worth logging.
    # The norm of the prediction is floored at COS_NORM_FLOOR·|v|: with adaLN-Zero the model
    # starts by predicting exactly 0, where the plain cosine's gradient is ~|v|/1e-8 (first-step
    # grad norms ~1e8 that stall AdamW for hundreds of steps). Equal to the plain cosine whenever
    # |v̂| ≥ 0.01·|v|, i.e. after the first few steps.
    if kernels.fused(pred.device):
        cos = kernels.cosine_loss(
            pred, target, dim=1, norm_floor=COS_NORM_FLOOR, reduction="per_sample", backend="triton"
        )  # (B,)
    else:
        t_norm = target.norm(dim=1)  # (B, h, w)
        p_norm = pred.norm(dim=1).clamp_min(COS_NORM_FLOOR * t_norm.detach())  # (B, h, w)
        dot = (pred * target).sum(dim=1)  # (B, h, w)
        cos = 1 - dot / (p_norm * t_norm).clamp_min(1e-12)  # (B, h, w)
        cos = cos.reshape(cos.shape[0], -1).mean(dim=1)  # (B,)
    per_sample = mse + cos_weight * cos  # (B,)
    return VelocityLoss(per_sample=per_sample, mean=per_sample.mean(), mse=mse, cos=cos)
