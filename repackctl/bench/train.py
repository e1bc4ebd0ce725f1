"""Training-step benchmark: DiT step throughput and model FLOP utilisation (MFU).

One step = sample t and noise, interpolate (``transport.interpolant``), forward the DiT, velocity
loss with the cosine term (the LightningDiT/RePack recipe), backward, AdamW step — the work of
``train dit`` without data loading, EMA or logging. FLOPs of one step are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention, forward and
backward); MFU = achieved model FLOP/s ÷ the peak measured in the same run with a large matmul
in the same dtype (not the vendor's datasheet figure, so it stays honest on a shared machine).
"""

from __future__ import annotations

from typing import Any

import torch

from repackctl.bench.common import BenchContext, Row, measure, timed_row

#: model id, latent channels, latent side, batch, peak-matmul side
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(model="tiny", channels=4, side=8, batch=4, matmul=256),
    "small": dict(model="lightningdit-s-2", channels=32, side=16, batch=8, matmul=1024),
    "paper": dict(model="lightningdit-xl-1", channels=32, side=16, batch=32, matmul=8192),
}


def build_model(p: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from repackctl.models.variants import MODEL_FACTORIES

    factory = MODEL_FACTORIES[p["model"]]
    return factory(in_channels=p["channels"], input_size=p["side"], num_classes=1000
                   if p["model"] != "tiny" else 10).to(device)  # fmt: skip


def matmul_peak(ctx: BenchContext, n: int, dtype: torch.dtype) -> tuple[float, Row]:
    """Measured FLOP/s of an (n×n)·(n×n) matmul in ``dtype`` on the benchmark device."""
    a = torch.randn(n, n, device=ctx.device).to(dtype)
    b = torch.randn(n, n, device=ctx.device).to(dtype)
    row = timed_row("peak", f"matmul {n}² {str(dtype).replace('torch.', '')}", lambda: a @ b,
                    ctx, items=2 * n**3 / 1e12, unit="TFLOP", baseline=True)  # fmt: skip
    return 2 * n**3 / row.median_s, row


def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure steps/s, samples/s and MFU; returns (rows, params, notes)."""
    from torch.utils.flop_counter import FlopCounterMode

    from repackctl.transport.interpolant import interpolate, velocity_target
    from repackctl.transport.loss import velocity_loss

    p = SHAPES[ctx.size]
    dev = ctx.device
    amp = torch.bfloat16 if ctx.cuda else None
    torch.manual_seed(0)
    model = build_model(p, dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    b, c, s = p["batch"], p["channels"], p["side"]
    x = torch.randn(b, c, s, s, device=dev)  # (B, C, h, w) a fixed "latent" batch
    y = torch.randint(0, model.config.num_classes, (b,), device=dev)  # (B,)

    def step() -> None:
        t = torch.rand(b, device=dev)  # (B,)
        noise = torch.randn_like(x)  # (B, C, h, w)
        xt = interpolate(x, noise, t)  # (B, C, h, w)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = model(xt, t, y)  # (B, C, h, w)
        loss = velocity_loss(pred, velocity_target(x, noise), cos_weight=1.0).mean
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    step_flops = float(counter.get_total_flops())
    row = timed_row("train", f"{p['model']} step (batch {b})", step, ctx, items=b, unit="sample")
    achieved = step_flops / row.median_s
    peak, peak_row = matmul_peak(ctx, p["matmul"], amp or torch.float32)
    peak_row.ratio = 1.0
    row.extra.update(
        steps_per_s=1.0 / row.median_s,
        step_tflop=step_flops / 1e12,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak / 1e12,
        mfu=achieved / peak,
    )
    row.ratio = achieved / peak
    row.note = (
        f"MFU {100 * achieved / peak:.1f}% ({achieved / 1e12:.3f} of {peak / 1e12:.3f} TFLOP/s)"
    )
    fwd = measure(lambda: _forward(model, x, y, amp), ctx)
    fwd_row = Row("train", "forward only (no grad)", fwd["median_s"], per_s=b / fwd["median_s"],
                  unit="sample", note="for reference: a step is ≈ 3 forwards of work")  # fmt: skip
    notes = ["ratio column of the train row = MFU (achieved model FLOP/s ÷ measured matmul peak)"]
    params = {**p, "params_m": round(model.num_params / 1e6, 2),
              "precision": "bf16 autocast" if amp else "fp32", "tokens": model.config.num_tokens}  # fmt: skip
    return [peak_row, row, fwd_row], params, notes


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: Any) -> None:
    t = torch.full((x.shape[0],), 0.5, device=x.device)  # (B,)
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        model(x, t, y)  # (B, C, h, w)
