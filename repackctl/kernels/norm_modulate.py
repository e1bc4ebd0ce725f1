"""Triton kernel: RMSNorm (float32 statistics, optional gain) fused with adaLN ``modulate``.

Fuses ``RMSNorm.forward`` and ``modulate`` of ``repackctl/models/layers.py`` (LightningDiT,
Yao et al. 2025; adaLN from DiT, Peebles & Xie 2023) into one pass over x, forward and
backward. One program handles a tile of ``BT`` tokens × all D channels of one sample, so the
row statistic stays in registers and the per-sample shift/scale vectors are loaded once.
The backward writes per-tile partial sums of the weight/shift/scale gradients, reduced in torch
(deterministic, no atomics). Reference: ``repackctl.kernels.reference.rmsnorm_modulate``.

(Not named ``rmsnorm_modulate.py``: importing such a submodule would rebind the package
attribute ``repackctl.kernels.rmsnorm_modulate`` from the public function to the module.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from repackctl.kernels._triton import jit, next_pow2, rows_per_block

try:  # guarded: the module must import without triton (kernels are jitted on first launch)
    import triton.language as tl
except Exception:  # noqa: BLE001
    tl = None


def _fwd_kernel(
    x_ptr, w_ptr, shift_ptr, scale_ptr, y_ptr, T, D, eps,  # noqa: ANN001
    HAS_W: tl.constexpr, HAS_SHIFT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    rows = tl.program_id(1) * BT + tl.arange(0, BT)  # (BT,)
    cols = tl.arange(0, BD)  # (BD,)
    cmask = cols < D
    mask = (rows < T)[:, None] & cmask[None, :]  # (BT, BD)
    offs = (b * T + rows)[:, None] * D + cols[None, :]  # (BT, BD)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BT, BD)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # (BT,)
    # RMSNorm casts back to x's dtype before the gain.
    y = (x * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)  # (BT, BD)
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    scale = tl.load(scale_ptr + b * D + cols, mask=cmask, other=0.0).to(tl.float32)  # (BD,)
    y = y * (1.0 + scale)[None, :]  # (BT, BD)
    if HAS_SHIFT:
        y = y + tl.load(shift_ptr + b * D + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _bwd_kernel(
    x_ptr, w_ptr, scale_ptr, g_ptr, dx_ptr, dw_ptr, dscale_ptr, dshift_ptr,  # noqa: ANN001
    T, D, eps,  # noqa: ANN001
    HAS_W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    tile = tl.program_id(1)
    rows = tile * BT + tl.arange(0, BT)  # (BT,)
    cols = tl.arange(0, BD)  # (BD,)
    cmask = cols < D
    mask = (rows < T)[:, None] & cmask[None, :]  # (BT, BD)
    offs = (b * T + rows)[:, None] * D + cols[None, :]  # (BT, BD)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BT, BD)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BT, BD)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # (BT,)
    n = x * rstd[:, None]  # (BT, BD) normalised, float32
    n_cast = n.to(x_ptr.dtype.element_ty).to(tl.float32)  # (BT, BD) as the forward used it
    s1 = 1.0 + tl.load(scale_ptr + b * D + cols, mask=cmask, other=0.0).to(tl.float32)  # (BD,)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)  # (BD,)
    else:
        w = tl.full((BD,), 1.0, tl.float32)  # (BD,)
    part = (b * tl.num_programs(1) + tile) * D + cols  # (BD,) row of the partial-sum buffers
    tl.store(dshift_ptr + part, tl.sum(g, axis=0), mask=cmask)
    tl.store(dscale_ptr + part, tl.sum(g * n_cast * w[None, :], axis=0), mask=cmask)
    tl.store(dw_ptr + part, tl.sum(g * n_cast * s1[None, :], axis=0), mask=cmask)
    dn = g * (s1 * w)[None, :]  # (BT, BD) gradient of the normalised x
    dx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / D)[:, None])  # (BT, BD)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _blocks(t: int, d: int) -> tuple[int, int, int]:
    """(tokens per tile, channel block, tiles per sample)."""
    bd = next_pow2(d)
    bt = min(rows_per_block(bd), next_pow2(t))
    return bt, bd, -(-t // bt)


class _RMSNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        shift: Tensor | None,
        scale: Tensor,
        eps: float,
    ) -> Tensor:
        b, t, d = x.shape
        x = x.contiguous()  # (B, T, D)
        scale = scale.contiguous()  # (B, D)
        shift_c = shift.contiguous() if shift is not None else None  # (B, D)
        dtypes = [x.dtype, scale.dtype] + [v.dtype for v in (weight, shift) if v is not None]
        out_dtype = dtypes[0]
        for dt in dtypes[1:]:
            out_dtype = torch.promote_types(out_dtype, dt)
        y = torch.empty((b, t, d), device=x.device, dtype=out_dtype)  # (B, T, D)
        bt, bd, tiles = _blocks(t, d)
        jit(_fwd_kernel)[(b, tiles)](
            x, weight if weight is not None else x, shift_c if shift is not None else x, scale,
            y, t, d, eps, HAS_W=weight is not None, HAS_SHIFT=shift is not None, BT=bt, BD=bd,
            num_warps=4 if bd <= 1024 else 8,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, scale)
        ctx.eps = eps
        ctx.shift_dtype = shift.dtype if shift is not None else None
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, None]:
        x, weight, scale = ctx.saved_tensors
        b, t, d = x.shape
        bt, bd, tiles = _blocks(t, d)
        g = g.contiguous()  # (B, T, D)
        dx = torch.empty_like(x)  # (B, T, D)
        parts = torch.empty((3, b, tiles, d), device=x.device, dtype=torch.float32)
        jit(_bwd_kernel)[(b, tiles)](
            x, weight if weight is not None else x, scale, g, dx, parts[0], parts[1], parts[2],
            t, d, ctx.eps, HAS_W=weight is not None, BT=bt, BD=bd,
            num_warps=4 if bd <= 1024 else 8,
        )  # fmt: skip
        dw = parts[0].sum((0, 1)).to(weight.dtype) if weight is not None else None  # (D,)
        dscale = parts[1].sum(1).to(scale.dtype)  # (B, D)
        dshift = parts[2].sum(1).to(ctx.shift_dtype) if ctx.shift_dtype is not None else None
        return dx, dw, dshift, dscale, None


def rmsnorm_modulate_triton(
    x: Tensor, weight: Tensor | None, shift: Tensor | None, scale: Tensor, eps: float
) -> Tensor:
    """Fused ``modulate(RMSNorm(x), shift, scale)``: x (B, T, D) → (B, T, D)."""
    return _RMSNormModulate.apply(x, weight, shift, scale, eps)
