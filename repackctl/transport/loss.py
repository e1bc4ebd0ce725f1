"""Velocity-matching loss of the linear path.

MSE between predicted and target velocity (SiT ``transport.training_losses``), plus the optional
direction term ``1 − cos(v̂, v)`` over channels used by LightningDiT (``use_cosine_loss``) and the
official RePack stage 2. Both are averaged over all non-batch positions per sample, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from repackctl.errors import ConfigError


@dataclass(frozen=True)
class VelocityLoss:
    """Loss per sample (B,) and its batch mean; ``mse`` and ``cos`` are the parts (B,)."""

    per_sample: Tensor
    mean: Tensor
    mse: Tensor
    cos: Tensor


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
    cos = 1 - F.cosine_similarity(pred, target, dim=1)  # (B, h, w)
    cos = cos.reshape(cos.shape[0], -1).mean(dim=1)  # (B,)
    per_sample = mse + cos_weight * cos  # (B,)
    return VelocityLoss(per_sample=per_sample, mean=per_sample.mean(), mse=mse, cos=cos)
