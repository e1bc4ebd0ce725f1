"""Timings of the fused ops of ``repackctl.kernels``: eager vs ``torch.compile(eager)`` vs Triton.

For each op (RMSNorm + modulate, 2-D RoPE, SwiGLU gate, cosine loss), at the shapes of
``repackctl.bench.kernels.SHAPES``, forward alone and forward + backward (the training step),
in bf16 on CUDA. The eager rows are the group baselines, so ``ratio`` is the speed-up. Needs
CUDA and Triton; elsewhere it returns one skipped row saying why. Used by
``benchmarks/bench_kernels.py --fused``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from repackctl.bench.common import BenchContext, Row, fill_ratios, skipped, timed_row
from repackctl.bench.kernels import SHAPES
from repackctl.kernels import available, cosine_loss, rmsnorm_modulate, rope_2d, swiglu_gate
from repackctl.models.layers import Rope2d, swiglu_hidden

REPA_WIDTH = {"tiny": 32, "small": 768, "paper": 768}  # encoder token width E of the REPA loss


def _cases(ctx: BenchContext) -> dict[str, tuple[Callable[..., Tensor], list[Tensor]]]:
    """op name → (function of the inputs taking ``backend=``, inputs requiring grad)."""
    b, side, d, heads = SHAPES[ctx.size]
    t, dh, e = side * side, d // heads, REPA_WIDTH[ctx.size]
    dev, dtype = ctx.device, torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(dev, dtype).requires_grad_()

    rope = Rope2d(dh, side, side).to(dev)
    return {
        "rmsnorm+modulate": (
            lambda x, w, sh, sc, backend: rmsnorm_modulate(x, w, sh, sc, backend=backend),
            [rand(b, t, d), rand(d), rand(b, d), rand(b, d)],
        ),
        "rope": (
            lambda q, backend: rope_2d(q, rope.freqs_cos, rope.freqs_sin, backend=backend),
            [rand(b, heads, t, dh)],  # (B, H, T, Dh)
        ),
        "swiglu gate": (
            lambda x12, backend: swiglu_gate(x12, backend=backend),
            [rand(b, t, 2 * swiglu_hidden(d))],  # (B, T, 2F)
        ),
        "cosine loss": (
            lambda p, tg, backend: cosine_loss(p, tg, backend=backend),
            [rand(b, t, e), rand(b, t, e)],  # (B, T, E)
        ),
    }


def _step(fn: Callable[..., Tensor], inputs: list[Tensor], backward: bool) -> Callable[[], None]:
    """One call of ``fn(*inputs)``, then its backward with an all-ones gradient when asked."""

    def call() -> None:
        out = fn(*inputs)
        if backward:
            out.backward(torch.ones_like(out))
            for x in inputs:
                x.grad = None
        else:
            out.detach()

    return call


def fused_rows(ctx: BenchContext) -> list[Row]:
    """Rows ``fused:<op> <fwd|fwd+bwd>`` × {eager, torch.compile, triton}; skipped off CUDA."""
    if not ctx.cuda:
        return [skipped("fused", "repackctl.kernels (Triton)", "needs CUDA (run on a GPU node)")]
    if not available():
        return [skipped("fused", "repackctl.kernels (Triton)", "triton is not installed")]
    b, side, _, _ = SHAPES[ctx.size]
    kw = {"items": b * side * side, "unit": "token"}
    rows: list[Row] = []
    for op, (fn, inputs) in _cases(ctx).items():
        for backward in (False, True):
            group = f"fused:{op} {'fwd+bwd' if backward else 'fwd'}"
            eager = _step(lambda *a, fn=fn: fn(*a, backend="eager"), inputs, backward)
            rows.append(timed_row(group, "eager", eager, ctx, baseline=True, **kw))
            rows.append(_compiled(group, fn, inputs, backward, ctx, kw))
            triton = _step(lambda *a, fn=fn: fn(*a, backend="triton"), inputs, backward)
            rows.append(timed_row(group, "triton (repackctl.kernels)", triton, ctx, **kw))
    return fill_ratios(rows)


def _compiled(
    group: str, fn: Callable[..., Tensor], inputs: list[Tensor], backward: bool,
    ctx: BenchContext, kw: dict,
) -> Row:  # fmt: skip
    """The eager reference under ``torch.compile`` (inductor), or a skipped row saying why."""
    label = "torch.compile(eager)"
    if not ctx.compile:
        return skipped(group, label, "disabled (--no-compile)")
    try:
        compiled = torch.compile(lambda *a: fn(*a, backend="eager"), dynamic=False)
        return timed_row(group, label, _step(compiled, inputs, backward), ctx,
                         warmup=max(ctx.warmup, 2), **kw)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any backend failure becomes a skipped row
        return skipped(group, label, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
