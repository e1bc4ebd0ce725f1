"""Benchmarks behind `repackctl benchmark` and ``benchmarks/`` (library code, not tests).

Sub-benchmarks (one module each, each with ``run(ctx) -> (rows, params, notes)``): ``kernels``,
``cache``, ``extract``, ``train``, ``sample``. :func:`run_benchmark` adds the environment and
timing metadata; :func:`repackctl.bench.common.write_result` writes the JSON. Figures are medians
after warm-up; compare the ratios inside one result, not absolute times across machines or runs.
"""

from __future__ import annotations

import importlib
import time

from repackctl.bench.common import BenchContext, BenchResult, Row, env_info, now_iso, write_result
from repackctl.errors import ConfigError

BENCHMARKS = ("kernels", "cache", "extract", "train", "sample")

__all__ = ["BENCHMARKS", "BenchContext", "BenchResult", "Row", "run_benchmark", "write_result"]


def run_benchmark(name: str, ctx: BenchContext) -> BenchResult:
    """Run one sub-benchmark and wrap its rows with parameters and environment info."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}", hint=f"use one of {', '.join(BENCHMARKS)}")
    module = importlib.import_module(f"repackctl.bench.{name}")
    started = now_iso()
    t0 = time.perf_counter()
    with ctx.progress(f"benchmark {name} ({ctx.size})", total=None, unit="run"):
        rows, params, notes = module.run(ctx)
    # what a sub-benchmark reports it really used (e.g. compile off on a CPU) wins over the request
    params = {"warmup": ctx.warmup, "repeats": ctx.repeats, "compile": ctx.compile,
              "min_sample_s": ctx.min_sample_s, **params}  # fmt: skip
    return BenchResult(
        name=name,
        size=ctx.size,
        rows=rows,
        params=params,
        env=env_info(ctx.device),
        notes=notes,
        started_at=started,
        seconds=time.perf_counter() - t0,
    )
