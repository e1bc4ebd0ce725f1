"""Random-batch read throughput of our cache vs an .npy memmap and LightningDiT-style shards.

Thin script over ``repackctl.bench.cache`` (the same code as ``repackctl benchmark cache``):
prints the table with the ratios and writes the JSON result.

    python benchmarks/bench_cache.py --size small
    python benchmarks/bench_cache.py --size paper --workdir /local/nvme/tmp   # 3.3 GB per layout
"""

from __future__ import annotations

import argparse
import sys

from repackctl.bench import BenchContext, run_benchmark, write_result
from repackctl.bench.common import check_out
from repackctl.errors import script_main


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/)")
    args = parser.parse_args(argv)
    check_out("cache", args.out)  # before anything runs: never replace a user's file
    from pathlib import Path

    ctx = BenchContext(
        size=args.size,
        warmup=args.warmup,
        repeats=args.repeats,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    result = run_benchmark("cache", ctx)
    p = result.params
    print(f"cache read, {p['n']} samples of {p['sample_shape']} float16, batch {p['batch']}, "
          f"chunk {p['chunk']}, shard {p['shard']} (median of {args.repeats})")  # fmt: skip
    print(f"{'layout':<44} {'samples/s':>12} {'vs npy memmap':>14}")
    for row in result.rows:
        per = f"{row.per_s:,.0f}" if row.per_s else "-"
        ratio = f"{row.ratio:.3f}x" if row.ratio else "-"
        print(f"{row.case:<44} {per:>12} {ratio:>14}  {row.note}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"results: {write_result(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
