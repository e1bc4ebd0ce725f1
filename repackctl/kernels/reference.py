"""Eager PyTorch references of the fused ops: the CPU path and the ground truth of the kernels.

Each function reproduces, operation for operation, the code the model runs today, so that the
Triton kernels can be checked against it and the model can switch backends without a change in
its numbers (``tests/kernels`` asserts both):

* :func:`rmsnorm_modulate` — ``RMSNorm`` then ``modulate`` of ``repackctl/models/layers.py``, as
  a LightningDiT block (Yao et al. 2025) chains them in ``DiTBlock.forward`` / ``FinalLayer``;
  DiT's adaLN (Peebles & Xie 2023).
* :func:`rope_2d` — ``Rope2d.forward`` (EVA-02 2-D rotary embedding, Fang et al. 2023):
  interleaved pairs (2i, 2i+1), per-channel cos/sin tables of shape (T, Dh).
* :func:`swiglu_gate` — the gate inside ``SwiGLU.forward`` (Shazeer 2020): ``silu`` of the
  first half of the ``w12`` output times the second half.
* :func:`cosine_loss` — ``1 − cos`` per token over the channels: ``repa_loss`` of
  ``repackctl/models/repa.py`` (REPA, Yu et al. 2025; ``F.cosine_similarity`` rule) and the
  direction term of ``velocity_loss`` in ``repackctl/transport/loss.py`` (floored norm rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RMS_EPS = 1e-6  # RMSNorm epsilon of the model (make_norm)
COSINE_EPS = 1e-8  # F.cosine_similarity eps of repa_loss (clamps each norm)
FLOORED_EPS = 1e-12  # velocity_loss clamp of the product of norms

REDUCTIONS = ("mean", "per_sample", "none")


def rmsnorm_modulate(
    x: Tensor,
    weight: Tensor | None,
    shift: Tensor | None,
    scale: Tensor,
    eps: float = RMS_EPS,
) -> Tensor:
    """``modulate(RMSNorm(x), shift, scale)``; x (B, T, D), weight (D,) or None, shift/scale (B, D).

    The mean of squares is taken in float32 and the normalised value cast back to x's dtype
    before the gain, as ``RMSNorm.forward``; ``shift=None`` is LightningDiT's no-shift variant.
    """
    xf = x.float()  # (B, T, D)
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)  # (B, T, D)
    if weight is not None:
        out = out * weight  # (B, T, D)
    out = out * (1 + scale.unsqueeze(1))  # (B, T, D)
    if shift is not None:
        out = out + shift.unsqueeze(1)  # (B, T, D)
    return out


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, …) → (−x1, x0, −x3, x2, …): multiplication by i on each pair."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., Dh/2, 2)
    x0, x1 = pairs.unbind(-1)  # 2 × (..., Dh/2)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)  # (..., Dh)


def rope_2d(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Rotate q or k (B, H, T, Dh) by the (T, Dh) tables of ``Rope2d``, in float32."""
    xf = x.float()  # (B, H, T, Dh)
    out = xf * freqs_cos + rotate_pairs(xf) * freqs_sin  # (B, H, T, Dh)
    return out.type_as(x)


def swiglu_gate(x12: Tensor) -> Tensor:
    """``silu(a) * b`` where ``a, b = x12.chunk(2, -1)``; x12 (..., 2F) → (..., F)."""
    a, b = x12.chunk(2, dim=-1)  # 2 × (..., F)
    return F.silu(a) * b  # (..., F)


def _reduce(per_token: Tensor, reduction: str) -> Tensor:
    """(B, …) per-token losses → scalar mean, (B,) per-sample mean, or unchanged."""
    if reduction == "mean":
        return per_token.mean()
    if reduction == "per_sample":
        return per_token.reshape(per_token.shape[0], -1).mean(dim=1)  # (B,)
    return per_token


def cosine_loss(
    pred: Tensor,
    target: Tensor,
    *,
    dim: int = -1,
    norm_floor: float | None = None,
    eps: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """``1 − cos(pred, target)`` over channel ``dim`` per token, then reduced; float32 result.

    ``norm_floor=None``: ``F.cosine_similarity`` (each norm clamped at ``eps``, default 1e-8),
    the rule of ``repa_loss`` (whose value is this mean − 1).
    ``norm_floor=f``: the rule of ``velocity_loss``: the prediction norm is floored at
    ``f·|target|`` (target norm detached) and the product of norms at ``eps`` (default 1e-12).
    ``reduction``: ``"mean"`` (scalar), ``"per_sample"`` (B,) or ``"none"`` (shape without dim).
    """
    pred, target = pred.float(), target.float()
    if norm_floor is None:
        cos = F.cosine_similarity(pred, target, dim=dim, eps=COSINE_EPS if eps is None else eps)
        per_token = 1 - cos  # (B, …)
    else:
        t_norm = target.norm(dim=dim)  # (B, …)
        p_norm = pred.norm(dim=dim).clamp_min(norm_floor * t_norm.detach())  # (B, …)
        dot = (pred * target).sum(dim=dim)  # (B, …)
        denom = (p_norm * t_norm).clamp_min(FLOORED_EPS if eps is None else eps)  # (B, …)
        per_token = 1 - dot / denom  # (B, …)
    return _reduce(per_token, reduction)
