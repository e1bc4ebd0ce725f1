"""Triton kernel: EVA-style 2-D rotary embedding of q or k, forward and backward.

The rotation of ``Rope2d.forward`` in ``repackctl/models/layers.py`` (EVA-02, Fang et al. 2023;
as in LightningDiT): interleaved channel pairs (2i, 2i+1) rotate by the per-channel tables
``freqs_cos`` / ``freqs_sin`` (T, Dh), in float32, cast back to the input dtype. Eager runs a
float cast, the pair shuffle (unflatten/stack copy), two products, a sum and a cast; the kernel
reads each pair once. The rotation is orthogonal, so the backward is the same kernel rotating
by the opposite angle (``BACKWARD``). q/k may be strided views of the qkv projection (no copy).
Reference: ``repackctl.kernels.reference.rope_2d``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from repackctl.errors import ConfigError
from repackctl.kernels._triton import jit, next_pow2, rows_per_block

try:  # guarded: the module must import without triton (kernels are jitted on first launch)
    import triton.language as tl
except Exception:  # noqa: BLE001
    tl = None


def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, y_ptr, H, T, DH, sxb, sxh, sxt,  # noqa: ANN001
    BACKWARD: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BT + tl.arange(0, BT)  # (BT,) token index
    pairs = tl.arange(0, BP)  # (BP,) pair index i of channels (2i, 2i+1)
    mask = (rows < T)[:, None] & (pairs < DH // 2)[None, :]  # (BT, BP)
    even = 2 * pairs[None, :]  # (1, BP)
    src = x_ptr + (bh // H) * sxb + (bh % H) * sxh + rows[:, None] * sxt + even  # (BT, BP)
    x0 = tl.load(src, mask=mask, other=0.0).to(tl.float32)  # (BT, BP) channels 2i
    x1 = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)  # (BT, BP) channels 2i+1
    tab = rows[:, None] * DH + even  # (BT, BP) offsets in the (T, Dh) tables
    c0 = tl.load(cos_ptr + tab, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + tab + 1, mask=mask, other=0.0).to(tl.float32)
    s0 = tl.load(sin_ptr + tab, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + tab + 1, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # transpose of y = x·cos + R(x)·sin, R(x) = (−x1, x0): dx = g·cos − R(g·sin)
        y0 = x0 * c0 + x1 * s1  # (BT, BP)
        y1 = x1 * c1 - x0 * s0  # (BT, BP)
    else:
        y0 = x0 * c0 - x1 * s0  # (BT, BP)
        y1 = x1 * c1 + x0 * s1  # (BT, BP)
    dst = y_ptr + (bh * T + rows[:, None]) * DH + even  # (BT, BP) contiguous output
    tl.store(dst, y0.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + 1, y1.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> Tensor:
    """Rotate x (B, H, T, Dh) (any strides with unit channel stride) into a contiguous tensor."""
    if x.stride(-1) != 1:
        x = x.contiguous()  # (B, H, T, Dh)
    b, h, t, dh = x.shape
    y = torch.empty((b, h, t, dh), device=x.device, dtype=x.dtype)  # (B, H, T, Dh)
    bp = next_pow2(dh // 2)
    bt = min(rows_per_block(bp, 2048), next_pow2(t))
    jit(_rope_kernel)[(b * h, -(-t // bt))](
        x, cos, sin, y, h, t, dh, x.stride(0), x.stride(1), x.stride(2),
        BACKWARD=backward, BT=bt, BP=bp, num_warps=4,
    )  # fmt: skip
    return y


class _Rope2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _launch(g, cos, sin, backward=True), None, None


def rope_2d_triton(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Fused 2-D RoPE: x (B, H, T, Dh), tables (T, Dh) (constants, no gradient) → (B, H, T, Dh)."""
    b, h, t, dh = x.shape
    if dh % 2 or freqs_cos.shape != (t, dh) or freqs_sin.shape != (t, dh):
        raise ConfigError(
            f"rope_2d: tables {tuple(freqs_cos.shape)}/{tuple(freqs_sin.shape)} do not fit "
            f"q/k {tuple(x.shape)} (need (T, Dh) with even Dh)",
            hint="pass Rope2d.freqs_cos / freqs_sin built for the model's token grid",
        )
    cos = freqs_cos.detach().contiguous()  # (T, Dh)
    sin = freqs_sin.detach().contiguous()  # (T, Dh)
    return _Rope2d.apply(x, cos, sin)
