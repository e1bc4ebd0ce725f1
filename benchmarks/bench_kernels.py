"""Kernel timings of one LightningDiT block's ops: SDPA backends, RMSNorm, RoPE, adaLN modulate,
eager vs torch.compile (fused Triton on CUDA).

Thin script over ``repackctl.bench.kernels`` (the same code as ``repackctl benchmark kernels``).

    python benchmarks/bench_kernels.py --size paper          # on a GPU node
    python benchmarks/bench_kernels.py --size small --no-compile
    python benchmarks/bench_kernels.py --size paper --fused  # + repackctl.kernels (Triton) rows
"""

from __future__ import annotations

import argparse
import sys

from repackctl.errors import script_main


@script_main
def main(argv: list[str] | None = None) -> int:
    from repackctl.bench import BenchContext, run_benchmark, write_result
    from repackctl.bench.common import check_out
    from repackctl.runtime import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--fused", action="store_true", help="also time repackctl.kernels ops")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/)")
    args = parser.parse_args(argv)
    check_out("kernels", args.out)  # before anything runs: never replace a user's file
    ctx = BenchContext(
        size=args.size,
        warmup=args.warmup,
        repeats=args.repeats,
        compile=not args.no_compile,
        device=resolve_device(args.device),
    )
    result = run_benchmark("kernels", ctx)
    if args.fused:
        from repackctl.bench.fused import fused_rows

        result.rows.extend(fused_rows(ctx))
    print(f"kernels on {result.env['gpu'] or result.env['cpu']}, {result.params}")
    print(f"{'group':<14} {'case':<36} {'median':>12} {'vs eager':>10}")
    for row in result.rows:
        med = f"{row.median_s * 1e6:,.1f} us" if row.median_s else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio else "-"
        print(f"{row.group:<14} {row.case:<36} {med:>12} {ratio:>10}  {row.note}")
    print(f"results: {write_result(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
