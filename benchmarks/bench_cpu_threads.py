"""One or two CPU threads, and OpenMP's wait policy, for a training step alone and beside busy work.

PyTorch's CPU kernels split each op over OpenMP threads. GNU OpenMP (the runtime of Linux
wheels) lets a thread that finished its share spin for a while before it sleeps
(``OMP_WAIT_POLICY`` unset). On cores of its own that saves a wake-up per op; when another
process wants a core, the spinning thread takes it from the thread that still has work, and
every op waits for the slower thread. ``OMP_WAIT_POLICY=PASSIVE`` makes an idle thread sleep at
once, and one thread has nobody to wait for. This script measures the three, so that the
README's advice for a busy machine (``OMP_NUM_THREADS=1``) rests on a figure.

The step is the pack's dominant cost in the demo: the built-in encoder's multi-layer feature
distance (``repackctl.pack.features``), forward and backward to the images, batch 16 at 64 px.
Each case runs in a fresh child process (the runtime reads the variables when torch loads it),
the cases interleaved ``--repeats`` times; a busy process is a Python loop. Ratios are against
two threads with the policy unset (what the demo's solo stages run) in the same run: compare
them, not the seconds, across machines.

    .venv/bin/python benchmarks/bench_cpu_threads.py          # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_cpu_threads.py --out benchmarks/results/cpu_threads.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from repackctl.errors import script_main

#: (name, threads, OMP_WAIT_POLICY or None for unset); the first one is the baseline
CASES = (("2 threads", 2, None), ("1 thread", 1, None), ("2 threads, PASSIVE", 2, "PASSIVE"))
BUSY = "while True: pass"


def child(steps: int, threads: int) -> None:
    """Time ``steps`` feature-distance steps (after two warm-up steps); print the seconds."""
    import torch

    from repackctl.pack.load import builtin_feature_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loss = builtin_feature_loss(64)
    x = torch.rand(16, 3, 64, 64).mul(2).sub(1).requires_grad_(True)  # (B, 3, R, R) in [-1, 1]
    y = torch.rand(16, 3, 64, 64).mul(2).sub(1)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss(x, y).mean().backward()
    print(json.dumps({"seconds": time.perf_counter() - start}))


def run_case(threads: int, policy: str | None, busy: int, steps: int) -> float:
    """One child's seconds per step with ``busy`` busy processes beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        cmd = [sys.executable, __file__, "--child", str(steps), "--threads", str(threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return float(json.loads(out.strip().splitlines()[-1])["seconds"]) / steps


def table(times: dict[tuple[str, int], list[float]], steps: int, repeats: int) -> str:
    """The markdown table: median seconds per step of each case, and its ratio to the first."""
    loads = sorted({busy for _, busy in times})
    head = " | ".join(f"{name}: s/step (× {CASES[0][0]})" for name, _, _ in CASES)
    lines = [
        f"{steps} steps of batch 16 at 64 px per run, median of {repeats} runs per case; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        f"| busy processes beside it | {head} |",
        "|---:|" + "---:|" * len(CASES),
    ]
    for busy in loads:
        base = statistics.median(times[(CASES[0][0], busy)])
        cells = []
        for name, _, _ in CASES:
            med = statistics.median(times[(name, busy)])
            cells.append(f"{med:.3f} ({med / base:.2f})")
        lines.append(f"| {busy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=None, help="markdown file for the table")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.threads)
        return 0
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for busy in args.busy:
            for name, threads, policy in CASES:
                seconds = run_case(threads, policy, busy, args.steps)
                times.setdefault((name, busy), []).append(seconds)
                print(f"{name:>20}, {busy} busy: {seconds:.3f} s/step", flush=True)
    text = table(times, args.steps, args.repeats)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
