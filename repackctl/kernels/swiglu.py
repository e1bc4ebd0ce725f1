"""Triton kernel: the SwiGLU gate ``silu(a) * b`` on the fused ``w12`` output.

``SwiGLU.forward`` of ``repackctl/models/layers.py`` (Shazeer 2020, "GLU Variants Improve
Transformer"; LightningDiT's feed-forward) splits ``w12(x)`` into halves ``a, b`` and gates the
first: ``silu(a) * b``. Eager, that is a silu kernel and a product kernel (plus the autograd
saves of both); fused, the kernel reads each half once and writes the (…, F) result, and the
backward writes both halves of the (…, 2F) gradient in one pass, computing in float32.
Reference: ``repackctl.kernels.reference.swiglu_gate``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from repackctl.errors import ConfigError
from repackctl.kernels._triton import jit

try:  # guarded: the module must import without triton (kernels are jitted on first launch)
    import triton.language as tl
except Exception:  # noqa: BLE001
    tl = None

BLOCK = 1024  # elements of the (N, F) output per program


def _gate_kernel(
    x_ptr, g_ptr, y_ptr, N, F, BACKWARD: tl.constexpr, BLOCK: tl.constexpr  # noqa: ANN001
):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat index in (N, F)
    mask = offs < N * F
    row = offs // F
    col = offs % F
    a_off = row * (2 * F) + col  # (BLOCK,) first half of row `row` of x (N, 2F)
    a = tl.load(x_ptr + a_off, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
    b = tl.load(x_ptr + a_off + F, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
    sig = tl.sigmoid(a)  # (BLOCK,)
    if BACKWARD:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
        da = g * b * sig * (1.0 + a * (1.0 - sig))  # (BLOCK,) d silu(a) = σ(a)(1 + a(1 − σ(a)))
        db = g * a * sig  # (BLOCK,)
        tl.store(y_ptr + a_off, da.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(y_ptr + a_off + F, db.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptr + offs, (a * sig * b).to(y_ptr.dtype.element_ty), mask=mask)


class _SwiGLUGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x12: Tensor) -> Tensor:  # type: ignore[override]
        x12 = x12.contiguous()  # (..., 2F)
        f = x12.shape[-1] // 2
        n = x12.numel() // (2 * f)
        y = torch.empty((*x12.shape[:-1], f), device=x12.device, dtype=x12.dtype)  # (..., F)
        jit(_gate_kernel)[(-(-n * f // BLOCK),)](
            x12, x12, y, n, f, BACKWARD=False, BLOCK=BLOCK, num_warps=4
        )  # fmt: skip
        ctx.save_for_backward(x12)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        (x12,) = ctx.saved_tensors
        f = x12.shape[-1] // 2
        n = x12.numel() // (2 * f)
        dx = torch.empty_like(x12)  # (..., 2F)
        jit(_gate_kernel)[(-(-n * f // BLOCK),)](
            x12, g.contiguous(), dx, n, f, BACKWARD=True, BLOCK=BLOCK, num_warps=4
        )  # fmt: skip
        return dx


def swiglu_gate_triton(x12: Tensor) -> Tensor:
    """Fused ``silu(a) * b`` with ``a, b = x12.chunk(2, -1)``: (..., 2F) → (..., F)."""
    if x12.shape[-1] % 2 or x12.numel() == 0:
        raise ConfigError(
            f"swiglu_gate needs a non-empty input with an even last dim, got {tuple(x12.shape)}",
            hint="pass the output of SwiGLU.w12 (width 2·hidden)",
        )
    return _SwiGLUGate.apply(x12)
