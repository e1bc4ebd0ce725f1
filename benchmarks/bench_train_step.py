"""Throughput of one DiT training step (flow matching + REPA) per variant, beside the matmul peak.

    python benchmarks/bench_train_step.py                       # tiny, S/1, B/1 on this device
    python benchmarks/bench_train_step.py --variants lightningdit-xl-1 --latent 32x16x16 -b 32

One step = the `repackctl train dit` step: linear interpolant at logit-normal t, DiT forward with
the hidden state of the REPA block, MSE + cosine velocity loss, REPA projector + negative-cosine
loss against random "encoder tokens", backward, AdamW update. FLOPs of a step are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention: forward and
backward), so "achieved GFLOP/s" = counted FLOPs / measured time. The peak is the best rate of a
square matmul in the same dtype, measured in the same run: compare the ratio, not absolute times
across machines (reference/environment.md: these machines are shared).
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from repackctl.dit.task import repa_hidden_default
from repackctl.models.repa import REPAProjector, default_repa_depth, repa_loss
from repackctl.registry import registry
from repackctl.transport.interpolant import interpolate, velocity_target
from repackctl.transport.loss import velocity_loss
from repackctl.transport.timesteps import TimeSampler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of an n×n @ n×n matmul over a few repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (allocations, kernel selection)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bench_variant(
    model_id: str,
    shape: tuple[int, int, int],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype,
    token_dim: int,
    repa: bool,
) -> dict:
    d, h, _ = shape
    torch.manual_seed(0)
    model = registry("models").get(model_id)(in_channels=d, input_size=h, num_classes=1000)
    model.to(device).train()
    width, depth = model.config.hidden_size, model.config.depth
    modules = [model]
    projector = None
    if repa:
        projector = REPAProjector(width, token_dim, repa_hidden_default(width)).to(device)
        modules.append(projector)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    k = default_repa_depth(depth)
    sampler = TimeSampler("logit_normal")
    x = torch.randn(batch, *shape, device=device)  # (B, d, h, w)
    y = torch.randint(0, 1000, (batch,), device=device)  # (B,)
    tokens = torch.randn(batch, model.config.num_tokens, token_dim, device=device)  # (B, T, C)
    autocast = dtype != torch.float32

    def step() -> None:
        noise = torch.randn_like(x)  # (B, d, h, w)
        t = sampler.sample(batch, device=device)  # (B,)
        x_t = interpolate(x, noise, t)  # (B, d, h, w)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            if projector is not None:
                v, hidden = model(x_t, t, y, return_hidden_at=k)  # (B, d, h, w), (B, T, D)
                loss = velocity_loss(v, velocity_target(x, noise), 1.0).mean
                loss = loss + 0.5 * repa_loss(projector(hidden), tokens)
            else:
                v = model(x_t, t, y)  # (B, d, h, w)
                loss = velocity_loss(v, velocity_target(x, noise), 1.0).mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {
        "variant": model_id,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens": model.config.num_tokens,
        "batch": batch,
        "ms": dt * 1e3,
        "img_s": batch / dt,
        "gflop": flops / 1e9,
        "gflops": flops / dt / 1e9,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="tiny,lightningdit-s-1,lightningdit-b-1")
    ap.add_argument("--latent", default=None, help="dxhxw (default 32x16x16 GPU, 32x8x8 CPU)")
    ap.add_argument("-b", "--batch", type=int, default=None, help="default 64 GPU, 4 CPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--token-dim", type=int, default=768, help="REPA target width (DINO-B)")
    ap.add_argument("--no-repa", action="store_true")
    ap.add_argument("--peak-size", type=int, default=None, help="matmul side (default 4096/2048)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else ("cpu" if args.device == "auto" else args.device))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    latent = args.latent or ("32x16x16" if device.type == "cuda" else "32x8x8")
    shape = tuple(int(v) for v in latent.split("x"))
    batch = args.batch or (64 if device.type == "cuda" else 4)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak_n = args.peak_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_peak(device, dtype, peak_n)

    console = Console(width=max(Console().width, 120))
    rows = []
    for variant in args.variants.split(","):
        rows.append(
            bench_variant(
                variant.strip(),
                shape,  # type: ignore[arg-type]
                batch,
                args.steps,
                args.warmup,
                device,
                dtype,
                args.token_dim,
                not args.no_repa,
            )
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = Table(
        title=f"DiT training step on {name} ({args.precision}, latent {latent}, "
        f"REPA {'off' if args.no_repa else 'on'})",
        caption=f"matmul peak {peak:.0f} GFLOP/s ({peak_n}² {args.precision}, same run); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    )
    for col in ("variant", "params (M)", "tokens", "batch", "ms/step", "img/s"):
        table.add_column(col, justify="right")
    for col in ("GFLOP/step", "GFLOP/s", "% of peak"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['params']:.2f}",
            str(r["tokens"]),
            str(r["batch"]),
            f"{r['ms']:.1f}",
            f"{r['img_s']:.1f}",
            f"{r['gflop']:.2f}",
            f"{r['gflops']:.1f}",
            f"{100 * r['gflops'] / peak:.0f}%",
        )
    console.print(table)


if __name__ == "__main__":
    main()
