"""Kernel benchmark: attention through each SDPA backend, RMSNorm, RoPE and adaLN modulate,
eager vs ``torch.compile`` — the ops of one LightningDiT block (``repackctl.models.layers``).

On CUDA, ``torch.compile`` lowers through inductor to fused Triton kernels, and ``F.rms_norm``
dispatches to ATen's fused CUDA kernel: those rows are the "fused" versions. On the CPU the
fused-GPU rows are skipped with a message (inductor there emits C++/OpenMP, measured as the
``torch.compile`` rows). Forward passes only, no autograd (``torch.inference_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from repackctl.bench.common import BenchContext, Row, fill_ratios, skipped, timed_row
from repackctl.models.layers import RMSNorm, Rope2d, modulate

#: (B, grid side, D, H): tiny for tests, small = S-size at 16², paper = XL/1 on 16×16×32 latents
SHAPES = {"tiny": (2, 4, 32, 2), "small": (8, 16, 384, 6), "paper": (32, 16, 1152, 16)}


def _backends() -> list[tuple[str, Any]]:
    from torch.nn.attention import SDPBackend

    out = [
        ("math", SDPBackend.MATH),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
    ]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        out.append(("cudnn", SDPBackend.CUDNN_ATTENTION))
    return out


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √Dh) V written out: the unfused reference."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    return scores.softmax(-1) @ v  # (B, H, T, Dh)


def _try_compile(fn: Callable, ctx: BenchContext) -> Callable | str:
    """A compiled version of ``fn`` run once (so compile errors surface here), or why not."""
    if not ctx.compile:
        return "disabled (--no-compile)"
    try:
        compiled = torch.compile(fn, dynamic=False)
    except Exception as e:  # noqa: BLE001 - any backend failure becomes a skipped row
        return f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return compiled


def _compiled_row(group: str, fn: Callable, ctx: BenchContext, **kw: Any) -> Row:
    compiled = _try_compile(fn, ctx)
    label = "torch.compile (inductor → Triton)" if ctx.cuda else "torch.compile (inductor C++)"
    if isinstance(compiled, str):
        return skipped(group, label, compiled)
    try:
        return timed_row(group, label, compiled, ctx, warmup=max(ctx.warmup, 2), **kw)
    except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler on the machine
        return skipped(group, label, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")


def _attention_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: BenchContext, kw: dict[str, Any]
) -> list[Row]:
    """Manual attention (baseline), the SDPA dispatcher and each SDPA backend that runs."""
    from torch.nn.attention import sdpa_kernel

    rows = [
        timed_row("attention", "manual softmax(QKᵀ)V", lambda: manual_attention(q, k, v), ctx,
                  baseline=True, **kw),
        timed_row("attention", "sdpa (dispatcher)", lambda: F.scaled_dot_product_attention(q, k, v),
                  ctx, **kw),
    ]  # fmt: skip
    for name, backend in _backends():

        def call(backend: Any = backend) -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)

        try:
            call()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            dtype = str(q.dtype).replace("torch.", "")
            why = f"unavailable for {ctx.device.type} {dtype} ({first[:80]})"
            rows.append(skipped("attention", f"sdpa:{name}", why))
            continue
        rows.append(timed_row("attention", f"sdpa:{name}", call, ctx, **kw))
    return rows


def _layer_rows(
    x: torch.Tensor,
    q: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    side: int,
    ctx: BenchContext,
    kw: dict[str, Any],
) -> list[Row]:
    """RMSNorm, RoPE, adaLN modulate and norm+modulate: eager (baseline) vs fused/compiled."""
    dev, dtype = x.device, x.dtype
    d, dh = x.shape[-1], q.shape[-1]
    # ---- RMSNorm: (B, T, D)
    norm = RMSNorm(d).to(dev, dtype)
    rows = [timed_row("rmsnorm", "eager (repackctl RMSNorm)", lambda: norm(x), ctx,
                      baseline=True, **kw)]  # fmt: skip
    if hasattr(F, "rms_norm"):
        w = norm.weight
        rows.append(
            timed_row("rmsnorm", "F.rms_norm (ATen fused)", lambda: F.rms_norm(x, (d,), w, 1e-6),
                      ctx, **kw)
        )  # fmt: skip
    rows.append(_compiled_row("rmsnorm", lambda: norm(x), ctx, **kw))

    # ---- RoPE on q: (B, H, T, Dh)
    rope = Rope2d(dh, side, side).to(dev)
    rows.append(timed_row("rope", "eager (repackctl Rope2d)", lambda: rope(q), ctx, baseline=True,
                          **kw))  # fmt: skip
    rows.append(_compiled_row("rope", lambda: rope(q), ctx, **kw))

    # ---- adaLN modulate: x·(1 + scale) + shift, per-sample (B, D) vectors
    rows.append(timed_row("modulate", "eager", lambda: modulate(x, shift, scale), ctx,
                          baseline=True, **kw))  # fmt: skip
    rows.append(_compiled_row("modulate", lambda: modulate(x, shift, scale), ctx, **kw))

    # ---- the pair as it occurs in a block: norm then modulate (compile fuses them)
    def norm_mod() -> torch.Tensor:
        return modulate(norm(x), shift, scale)  # (B, T, D)

    rows.append(timed_row("norm+modulate", "eager (2 ops)", norm_mod, ctx, baseline=True, **kw))
    rows.append(_compiled_row("norm+modulate", norm_mod, ctx, **kw))
    return rows


@torch.inference_mode()
def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure every kernel at ``ctx.size``; returns (rows, parameters, notes)."""
    b, side, d, heads = SHAPES[ctx.size]
    t, dh = side * side, d // heads
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    dev = ctx.device
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dev, dtype)

    notes: list[str] = []
    kw = {"items": b * t, "unit": "token"}
    q, k, v = rand(b, heads, t, dh), rand(b, heads, t, dh), rand(b, heads, t, dh)
    rows = _attention_rows(q, k, v, ctx, kw)
    x = rand(b, t, d)
    shift, scale = rand(b, d), rand(b, d)
    rows += _layer_rows(x, q, shift, scale, side, ctx, kw)
    if not ctx.cuda:
        rows.append(skipped("fused-gpu", "Triton / CUDA kernels", "needs CUDA (run on a GPU node)"))
        notes.append(
            "CPU run: fused Triton/CUDA rows skipped; torch.compile rows use inductor's C++ backend"
        )
    params = {"batch": b, "tokens": t, "dim": d, "heads": heads, "dtype": str(dtype)}
    return fill_ratios(rows), params, notes
