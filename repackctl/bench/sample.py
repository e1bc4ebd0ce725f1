"""Sampling benchmark: sampler overhead over bare model calls, and CFG batched vs two forwards.

- ``bare forwards``: ``steps`` calls of the DiT on a batch, nothing else (the floor);
- ``sample_ode euler``: ``transport.samplers.sample_ode`` with the same number of evaluations; the
  ratio shows the cost of the integration loop around the network;
- ``CFG batched``: ``transport.guidance.ClassifierFreeGuidance``, conditional and unconditional
  rows in ONE forward of 2B (what we ship) vs ``CFG two forwards``: the same guidance computed
  with two forwards of B, as some reference code does.

The model runs eager in every case (``--compile`` does not apply here), so the result reports
``compile: false``, as ``train`` reports what it really compiled.
"""

from __future__ import annotations

from typing import Any

import torch

from repackctl.bench.common import BenchContext, Row, fill_ratios, timed_row
from repackctl.bench.train import SHAPES as TRAIN_SHAPES
from repackctl.bench.train import build_model

STEPS = {"tiny": 2, "small": 10, "paper": 50}
CFG_SCALE = 4.0


def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure the sampler cases; returns (rows, params, notes)."""
    from repackctl.transport.guidance import ClassifierFreeGuidance
    from repackctl.transport.samplers import sample_ode

    p = dict(TRAIN_SHAPES[ctx.size])
    steps = STEPS[ctx.size]
    dev = ctx.device
    amp = torch.bfloat16 if ctx.cuda else None
    torch.manual_seed(0)
    model = build_model(p, dev).eval()
    b, c, s = p["batch"], p["channels"], p["side"]
    noise = torch.randn(b, c, s, s, device=dev)  # (B, C, h, w)
    y = torch.randint(0, model.config.num_classes, (b,), device=dev)  # (B,)
    null = model.null_class

    @torch.inference_mode()
    def f(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            return model(x, t, labels).float()  # (B, C, h, w)

    @torch.inference_mode()
    def bare() -> None:
        t = torch.full((b,), 0.5, device=dev)  # (B,)
        for _ in range(steps):
            f(noise, t, y)

    @torch.inference_mode()
    def ode() -> None:
        sample_ode(f, noise, y, steps=steps)

    @torch.inference_mode()
    def cfg_batched() -> None:
        sample_ode(ClassifierFreeGuidance(f, CFG_SCALE, null), noise, y, steps=steps)

    def two_forwards(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        cond = f(x, t, labels)  # (B, C, h, w)
        uncond = f(x, t, torch.full_like(labels, null))  # (B, C, h, w)
        return uncond + CFG_SCALE * (cond - uncond)  # (B, C, h, w)

    @torch.inference_mode()
    def cfg_two() -> None:
        sample_ode(two_forwards, noise, y, steps=steps)

    kw = {"items": b, "unit": "sample"}
    rows = [
        timed_row("sampler", f"bare forwards ×{steps}", bare, ctx, baseline=True, **kw),
        timed_row("sampler", f"sample_ode euler {steps} steps", ode, ctx, **kw),
        timed_row("cfg", "CFG two forwards (B + B)", cfg_two, ctx, baseline=True, **kw),
        timed_row("cfg", "CFG batched (one forward of 2B)", cfg_batched, ctx, **kw),
    ]
    # the sampler cases time the eager model: nothing here is compiled, whatever --compile asks
    params = {**p, "steps": steps, "cfg_scale": CFG_SCALE, "compile": False,
              "precision": "bf16 autocast" if amp else "fp32"}  # fmt: skip
    return fill_ratios(rows), params, []
