"""Throughput of one DiT training step (flow matching + REPA) per variant, beside the matmul peak.

    python benchmarks/bench_train_step.py                       # tiny, S/1, B/1 on this device
    python benchmarks/bench_train_step.py --variants lightningdit-xl-1 --latent 32x16x16 -b 32

One step = ``Trainer.step()`` of the task and engine that `repackctl train dit` builds (the same
code as `repackctl benchmark train`, ``repackctl/bench/train.py``): logit-normal t, linear
interpolant, DiT forward with the hidden state of the REPA block, MSE + cosine velocity loss,
REPA projector + negative-cosine loss against random "encoder tokens", backward, grad norm,
non-finite guard, AdamW, EMA, lr schedule. FLOPs of a step are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention: forward and
backward), so "achieved GFLOP/s" = counted FLOPs / measured time. The peak is the best rate of a
square matmul in the same dtype, measured in the same run: compare the ratio, not absolute times
across machines (reference/environment.md: these machines are shared).

"engine %" = the engine's own work per step (grad norm and its host sync, EMA, non-finite guard,
bookkeeping), timed piece by piece, over the step time: the loop's overhead over a bare step.

A text-conditioned variant (``mmdit-tiny``, ``mmdit-s-2`` …) times the `repackctl train t2i` step
instead, on random caption features of MiniLM's shape (32 tokens × 384), as `benchmark train
--model` does.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from repackctl.bench.train import SHAPES, build_trainer
from repackctl.errors import ConfigError, check_at_least, script_main

#: the cached caption features a text-conditioned variant (``mmdit-*``) trains on: tokens per
#: caption and width of the default text encoder (MiniLM, `repackctl captions`)
TEXT = {k: SHAPES["small"][k] for k in ("text_len", "text_dim")}


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
    precision: str,
    token_dim: int,
    repa: bool,
    compile_: bool,
) -> dict:
    d, h, _ = shape
    p = dict(model=model_id, channels=d, side=h, batch=batch, token_dim=token_dim)
    p |= TEXT  # read by a text-conditioned model only (its `train t2i` step)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, task = build_trainer(
            p, device, Path(tmp), compile_=compile_, precision=precision, repa=repa
        )
        for _ in range(warmup):
            trainer.step()
        counter = FlopCounterMode(display=False)
        with counter:
            trainer.step()
        flops = counter.get_total_flops()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        _sync(device)
        dt = (time.perf_counter() - t0) / steps
        costs = engine_costs(trainer)
        trainer.close()
    return {
        "variant": model_id,
        "params": task.num_params / 1e6,
        "tokens": task.data.token_shape[0],
        "batch": batch,
        "ms": dt * 1e3,
        "img_s": batch / dt,
        "gflop": flops / 1e9,
        "gflops": flops / dt / 1e9,
        "compiled_blocks": trainer.compiled,
        "engine_pct": 100 * sum(costs.values()) / dt,
        "engine_costs_ms": {k: v * 1e3 for k, v in costs.items()},
    }


def engine_costs(trainer, repeats: int = 200) -> dict[str, float]:
    """Seconds per step of each piece of engine work that a bare step does not do.

    Timed one by one on the trainer's own tensors: on a shared machine the difference of two
    whole-step timings is noisier (±15 %) than the few per cent it would measure.
    """
    device = trainer.device
    grads = [torch.randn_like(p) for p in trainer.opt.params["model"]]
    loss, flag = torch.ones((), device=device), torch.zeros((), device=device)

    def norm() -> None:  # finite check + logged grad norm, one per optimizer
        torch.stack([flag, torch.nn.utils.get_total_norm(grads)]).tolist()

    def guard() -> None:  # per-loss non-finite flag and window entry
        flag.add_((~torch.isfinite(loss)).float())
        trainer.window.add("loss/x", loss)

    def bookkeeping() -> None:  # grads cleared, lr read, schedules stepped
        for q in trainer.all_params:
            q.grad = None
        trainer.opt.lrs()
        trainer.opt.step_schedules()

    pieces = {
        "grad norm + host sync": norm,
        "EMA update": lambda: trainer.ema.update(trainer.model),
        "non-finite guard": guard,
        "bookkeeping": bookkeeping,
    }
    out = {}
    for name, fn in pieces.items():
        fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        out[name] = (time.perf_counter() - t0) / repeats
    trainer.window.pending.clear()
    return out


def check_args(args: argparse.Namespace) -> None:
    """Refuse what would time nothing or fail later: counts below their minimum, a bad latent."""
    check_at_least([("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                    ("--batch", args.batch, 1), ("--token-dim", args.token_dim, 1),
                    ("--peak-size", args.peak_size, 1)])  # fmt: skip
    if args.latent is not None and not re.fullmatch(r"[1-9]\d*x[1-9]\d*x[1-9]\d*", args.latent):
        raise ConfigError(f"--latent {args.latent!r}", "give channels x height x width: 32x16x16")


@script_main
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
    ap.add_argument("--compile", action="store_true", help="regional torch.compile of the blocks")
    args = ap.parse_args(argv)
    check_args(args)

    from repackctl.runtime import resolve_device

    device = resolve_device(args.device)  # an Error naming a device that is not here
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    latent = args.latent or ("32x16x16" if device.type == "cuda" else "32x8x8")
    shape = tuple(int(v) for v in latent.split("x"))
    batch = args.batch or (64 if device.type == "cuda" else 4)
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
                args.precision,
                args.token_dim,
                not args.no_repa,
                args.compile,
            )
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = Table(
        title=f"DiT training step on {name} ({args.precision}, latent {latent}, "
        f"REPA {'off' if args.no_repa else 'on'}, compile {'on' if args.compile else 'off'})",
        caption=f"matmul peak {peak:.0f} GFLOP/s ({peak_n}² {args.precision}, same run); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    )
    for col in ("variant", "params (M)", "tokens", "batch", "ms/step", "img/s"):
        table.add_column(col, justify="right")
    for col in ("GFLOP/step", "GFLOP/s", "% of peak", "engine %"):
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
            f"{r['engine_pct']:.1f}%",
        )
    console.print(table)
    for r in rows:
        parts = ", ".join(f"{k} {v:.3f} ms" for k, v in r["engine_costs_ms"].items())
        console.print(f"{r['variant']}: engine work per step beyond the bare step: {parts}")


if __name__ == "__main__":
    sys.exit(main())
