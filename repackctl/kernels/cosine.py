"""Triton kernel: per-token ``1 − cos(pred, target)`` over the channels, forward and backward.

Serves the REPA alignment loss (``repa_loss`` of ``repackctl/models/repa.py``; Yu et al. 2025,
``F.cosine_similarity`` with eps 1e-8 on each norm) and the direction term of the velocity
loss (``velocity_loss`` of ``repackctl/transport/loss.py``; LightningDiT's ``use_cosine_loss``):
there the prediction norm is floored at ``norm_floor·|target|`` (target norm detached) and the
product of norms at 1e-12. Eager, each rule is ~8 kernels over (B, T, C) plus their autograd
saves; the kernel reads pred and target once per token tile and writes one value per token,
and the backward recomputes the three row sums and writes both gradients in one pass.

Gradients follow torch's rules exactly: ``F.cosine_similarity`` clamps the norms without
gradient (the clamped value is used, the derivative is that of the plain norm), while
``clamp_min`` in ``velocity_loss`` passes the gradient only where the input is ≥ the bound.
Reference: ``repackctl.kernels.reference.cosine_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from repackctl.kernels._triton import jit, next_pow2, rows_per_block
from repackctl.kernels.reference import COSINE_EPS, FLOORED_EPS, _reduce

try:  # guarded: the module must import without triton (kernels are jitted on first launch)
    import triton.language as tl
except Exception:  # noqa: BLE001
    tl = None


def _cos_kernel(
    p_ptr, t_ptr, g_ptr, out_ptr, dp_ptr, dt_ptr, T, C, floor, eps,  # noqa: ANN001
    spb, spt, spc, stb, stt, stc, sdpb, sdpt, sdpc, sdtb, sdtt, sdtc,  # noqa: ANN001
    FLOORED: tl.constexpr, BACKWARD: tl.constexpr, NEED_DT: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    rows = tl.program_id(1) * BT + tl.arange(0, BT)  # (BT,) token index
    cols = tl.arange(0, BC)  # (BC,) channel index
    rmask = rows < T
    mask = rmask[:, None] & (cols < C)[None, :]  # (BT, BC)
    p = tl.load(p_ptr + b * spb + rows[:, None] * spt + cols[None, :] * spc, mask=mask, other=0.0)
    t = tl.load(t_ptr + b * stb + rows[:, None] * stt + cols[None, :] * stc, mask=mask, other=0.0)
    p = p.to(tl.float32)  # (BT, BC)
    t = t.to(tl.float32)  # (BT, BC)
    n = tl.sqrt(tl.sum(p * p, axis=1))  # (BT,) |pred|
    m = tl.sqrt(tl.sum(t * t, axis=1))  # (BT,) |target|
    dot = tl.sum(p * t, axis=1)  # (BT,)
    if FLOORED:  # velocity_loss: max(|p|, f·|t|) · |t|, clamped at eps; clamp_min gradients
        pn = tl.maximum(n, floor * m)  # (BT,)
        gp = tl.where(n >= floor * m, 1.0, 0.0)  # (BT,) does |p| reach the floor's gradient
        qn = m  # (BT,)
        raw = pn * qn  # (BT,)
        den = tl.maximum(raw, eps)  # (BT,)
        gd = tl.where(raw >= eps, 1.0, 0.0)  # (BT,)
        gq = gd * pn  # (BT,) d den / d|t| (the floor's own |t| is detached)
    else:  # F.cosine_similarity: each norm clamped at eps, gradient as if unclamped
        pn = tl.maximum(n, eps)  # (BT,)
        qn = tl.maximum(m, eps)  # (BT,)
        den = pn * qn  # (BT,)
        gp = tl.full((BT,), 1.0, tl.float32)  # (BT,)
        gd = tl.full((BT,), 1.0, tl.float32)  # (BT,)
        gq = pn  # (BT,)
    if BACKWARD:
        g = tl.load(g_ptr + b * T + rows, mask=rmask, other=0.0).to(tl.float32)  # (BT,) dL/dloss
        k = dot / (den * den)  # (BT,)
        inv_n = tl.where(n > 0, 1.0 / tl.where(n > 0, n, 1.0), 0.0)  # (BT,) torch: 0 at |p| = 0
        inv_m = tl.where(m > 0, 1.0 / tl.where(m > 0, m, 1.0), 0.0)  # (BT,)
        cp = k * gd * qn * gp * inv_n  # (BT,) coefficient of p in d den/d p
        ct = k * gq * inv_m  # (BT,) coefficient of t in d den/d t
        dp = -g[:, None] * (t / den[:, None] - cp[:, None] * p)  # (BT, BC)
        dp_off = b * sdpb + rows[:, None] * sdpt + cols[None, :] * sdpc  # (BT, BC)
        tl.store(dp_ptr + dp_off, dp.to(dp_ptr.dtype.element_ty), mask=mask)
        if NEED_DT:  # frozen targets (REPA encoder tokens, the velocity target) skip this write
            dt = -g[:, None] * (p / den[:, None] - ct[:, None] * t)  # (BT, BC)
            dt_off = b * sdtb + rows[:, None] * sdtt + cols[None, :] * sdtc  # (BT, BC)
            tl.store(dt_ptr + dt_off, dt.to(dt_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + b * T + rows, 1.0 - dot / den, mask=rmask)


def _launch(
    p: Tensor, t: Tensor, g: Tensor, out: Tensor, dp: Tensor, dt: Tensor,
    floor: float | None, eps: float, backward: bool, need_dt: bool = True,
) -> None:  # fmt: skip
    """Run the kernel on (B, T, C) views; forward fills ``out`` (B, T), backward ``dp``/``dt``."""
    b, n_tok, c = p.shape
    bc = next_pow2(c)
    bt = min(rows_per_block(bc), next_pow2(n_tok))
    jit(_cos_kernel)[(b, -(-n_tok // bt))](
        p, t, g, out, dp, dt, n_tok, c, 0.0 if floor is None else floor, eps,
        *p.stride(), *t.stride(), *dp.stride(), *dt.stride(),
        FLOORED=floor is not None, BACKWARD=backward, NEED_DT=need_dt, BT=bt, BC=bc,
        num_warps=4 if bc <= 1024 else 8,
    )  # fmt: skip


class _CosineLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, p: Tensor, t: Tensor, floor: float | None, eps: float
    ) -> Tensor:
        b, n_tok, _ = p.shape  # p, t: (B, T, C) views, any strides
        out = torch.empty((b, n_tok), device=p.device, dtype=torch.float32)  # (B, T)
        _launch(p, t, out, out, p, t, floor, eps, backward=False)
        ctx.save_for_backward(p, t)
        ctx.floor, ctx.eps = floor, eps
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor, Tensor | None, None, None]:
        p, t = ctx.saved_tensors
        dp = torch.empty_like(p)  # (B, T, C), p's strides when p is dense
        need_dt = ctx.needs_input_grad[1]
        dt = torch.empty_like(t) if need_dt else dp  # (B, T, C); dp is a dummy, never written
        _launch(p, t, g.contiguous(), g, dp, dt, ctx.floor, ctx.eps, True, need_dt)
        return dp, dt if need_dt else None, None, None


def cosine_loss_triton(
    pred: Tensor,
    target: Tensor,
    *,
    dim: int = -1,
    norm_floor: float | None = None,
    eps: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Fused ``1 − cos`` per token over channel ``dim``, then reduced; see the reference."""
    if eps is None:
        eps = COSINE_EPS if norm_floor is None else FLOORED_EPS
    b, c = pred.shape[0], pred.shape[dim]
    tok_shape = pred.movedim(dim, -1).shape[:-1]  # (B, …) shape of the per-token result
    p3 = pred.movedim(dim, -1).reshape(b, -1, c)  # (B, T, C), a view for contiguous NCHW / NTC
    t3 = target.movedim(dim, -1).reshape(b, -1, c)  # (B, T, C)
    per_token = _CosineLoss.apply(p3, t3, norm_floor, eps)  # (B, T) float32
    return _reduce(per_token.reshape(tok_shape), reduction)
