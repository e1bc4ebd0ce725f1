"""Velocity-matching loss of the linear path.

MSE between predicted and target velocity (SiT ``transport.training_losses``), plus the optional
direction term ``1 − cos(v̂, v)`` over channels used by LightningDiT (``use_cosine_loss``) and the
official RePack stage 2. Both are averaged over all non-batch positions per sample, as upstream.
The direction term floors |v̂| at ``norm_floor``·|v| (default ``COS_NORM_FLOOR``; DiT setting
``dit.cos_norm_floor``); ``norm_floor = 0`` is LightningDiT's plain ``cosine_similarity``
(``transport/transport.py``, eps 1e-8), as the paper preset trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
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


#: the cosine term floors |v̂| at this fraction of |v| by default (see velocity_loss)
COS_NORM_FLOOR = 0.01
#: F.cosine_similarity's eps in the official LightningDiT loss (PyTorch's default)
OFFICIAL_COS_EPS = 1e-8


def velocity_loss(
    pred: Tensor, target: Tensor, cos_weight: float = 0.0, norm_floor: float = COS_NORM_FLOOR
) -> VelocityLoss:
    """MSE(v̂, v) + cos_weight · (1 − cos over channels), per sample and averaged.

    pred, target: (B, C, …). ``cos_weight = 1`` is the official LightningDiT/RePack recipe.
    ``norm_floor``: |v̂| floored at this fraction of |v| in the cosine; 0 = the official plain
    ``F.cosine_similarity`` (eps 1e-8). Exactly zero when pred equals a non-zero target.
    """
    if pred.shape != target.shape:
        raise ConfigError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape",
            hint="the model must output as many channels as its input latent",
        )
    pred, target = pred.float(), target.float()
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    # Computed even at weight 0: it is cheap and worth logging.
    # Why the floor (default COS_NORM_FLOOR): the norm of the prediction is floored at
    # norm_floor·|v| because with adaLN-Zero the model starts by predicting exactly 0, where the
    # plain cosine's gradient is ~|v|/1e-8 (first-step grad norms ~1e6–1e8 that stall AdamW for
    # hundreds of steps). Equal to the plain cosine whenever |v̂| ≥ norm_floor·|v|, i.e. after
    # the first few steps.
    # With norm_floor 0 the official cosine is kept as it is, first steps included.
    floor = float(norm_floor) if norm_floor > 0 else None  # None: the kernels' plain cosine
    if kernels.fused(pred.device):
        cos = kernels.cosine_loss(
            pred, target, dim=1, norm_floor=floor, reduction="per_sample", backend="triton"
        )  # (B,)
    elif floor is None:
        cos = 1 - F.cosine_similarity(pred, target, dim=1, eps=OFFICIAL_COS_EPS)  # (B, h, w)
        cos = cos.reshape(cos.shape[0], -1).mean(dim=1)  # (B,)
    else:
        t_norm = target.norm(dim=1)  # (B, h, w)
        p_norm = pred.norm(dim=1).clamp_min(floor * t_norm.detach())  # (B, h, w)
        dot = (pred * target).sum(dim=1)  # (B, h, w)
        cos = 1 - dot / (p_norm * t_norm).clamp_min(1e-12)  # (B, h, w)
        cos = cos.reshape(cos.shape[0], -1).mean(dim=1)  # (B,)
    per_sample = mse + cos_weight * cos  # (B,)
    return VelocityLoss(per_sample=per_sample, mean=per_sample.mean(), mse=mse, cos=cos)
