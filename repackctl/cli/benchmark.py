"""`repackctl benchmark kernels | cache | extract | train | sample | all`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from repackctl.cli.common import console, err_console, rich_progress
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings

if TYPE_CHECKING:
    from repackctl.bench.common import BenchResult

NAMES = ("kernels", "cache", "extract", "train", "sample", "all")
HELP = {
    "kernels": "Attention (SDPA backends), RMSNorm, RoPE, adaLN modulate: eager vs torch.compile "
    "(and fused Triton/CUDA on a GPU).",
    "cache": "Random training batches from our Zarr cache vs .npy memmap and LightningDiT-style "
    "safetensors shards (samples/s and ratios).",
    "extract": "run_extract wall time vs the bare encoder forward on the same images.",
    "train": "DiT training-step throughput and model FLOP utilisation vs a measured matmul peak "
    "(--model mmdit-tiny …: the text-to-image MMDiT step).",
    "sample": "Sampler time vs bare model calls; CFG batched vs two forwards.",
    "all": "Every benchmark above, one JSON file.",
}


#: the [benchmark] settings every benchmark takes, and those only some use: each command offers
#: the options it uses (`benchmark cache --encoder x` ran and recorded nothing of it). Every
#: result reports ``compile`` as what it really compiled (false where nothing is), so all take it.
_SHARED = ("size", "warmup", "repeats", "min_time", "threads", "compile", "out")
FIELDS = {
    "kernels": _SHARED,
    "cache": (*_SHARED, "workdir"),
    "extract": (*_SHARED, "workdir", "encoder", "encoder_weights"),
    "train": (*_SHARED, "workdir", "model"),
    "sample": _SHARED,
    "all": None,  # every benchmark: every option
}


def _table(result: BenchResult) -> object:
    from rich.table import Table

    table = Table(title=f"benchmark {result.name} ({result.size})")
    for col in ("group", "case", "median", "throughput", "ratio", "note"):
        table.add_column(
            col, justify="right" if col in ("median", "throughput", "ratio") else "left"
        )
    for r in result.rows:
        median = "—" if r.median_s is None else _seconds(r.median_s)
        per = "—" if r.per_s is None else f"{r.per_s:,.4g} {r.unit}/s"
        ratio = "—" if r.ratio is None else f"{r.ratio:.3g}×"
        if r.baseline:
            ratio = "1× (baseline)"
        table.add_row(r.group, r.case, median, per, ratio, r.note)
    return table


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def _context(settings: Any) -> Any:
    """The benchmark context of resolved settings (sets torch's CPU threads if asked)."""
    from pathlib import Path

    from repackctl.bench import BenchContext
    from repackctl.runtime import resolve_device

    b = settings.benchmark
    if b.threads is not None:
        import torch

        torch.set_num_threads(b.threads)
    return BenchContext(
        size=b.size,
        warmup=b.warmup,
        repeats=b.repeats,
        compile=b.compile,
        min_sample_s=b.min_time,
        device=resolve_device(settings.device),
        workdir=Path(b.workdir) if b.workdir else None,
        encoder=b.encoder,
        encoder_weights=b.encoder_weights,
        model=b.model,
        progress=rich_progress,
    )


def _check_choices(name: str, b: Any) -> None:
    """A missing --encoder-weights file or an unknown --model, refused before anything runs:
    `benchmark all` met them only after the benchmarks before it had run (their results lost)."""
    from repackctl.bench.extract import check_weights
    from repackctl.registry import registry

    if b.encoder_weights and name in ("extract", "all"):
        check_weights(b.encoder_weights)
    if b.model and name in ("train", "all"):
        registry("models").get(b.model)


def _run_and_print(name: str, settings: Any) -> None:
    """Run benchmark ``name`` (or all), print each table, write the JSON and say where."""
    from repackctl.bench import BENCHMARKS, run_benchmark, write_result
    from repackctl.bench.common import check_out

    check_out(name, settings.benchmark.out)  # before anything runs: never replace a user's file
    _check_choices(name, settings.benchmark)
    ctx = _context(settings)
    names = BENCHMARKS if name == "all" else (name,)
    results = []
    for n in names:
        result = run_benchmark(n, ctx)
        results.append(result)
        console.print(_table(result))
        for note in result.notes:
            err_console.print(
                f"[cyan]note:[/] {escape(note)}", markup=True, highlight=False, soft_wrap=True
            )
    path = write_result(results[0] if name != "all" else results, settings.benchmark.out)
    env = results[0].env
    where = env["gpu"] or env["cpu"]
    console.print(
        f"device {env['device']} ({where}), torch {env['torch']}, {env['torch_threads']} "
        f"threads, git {env['git_revision'] or 'n/a'}. Results: {path}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "Compare ratios within this run; absolute times move between runs on shared machines.",
        style="dim",
    )


def _make(name: str):
    """The Typer command of benchmark ``name`` (its help is ``HELP[name]``); its options are
    generated from the ``[benchmark]`` settings (plus ``--device``)."""

    def command(resolved: ResolvedSettings) -> None:
        _run_and_print(name, resolved.settings)

    command.__doc__ = HELP[name]
    return settings_command("benchmark", include=FIELDS[name], common=("device",))(command)


benchmark_app = typer.Typer(
    name="benchmark",
    help="Throughput and kernel benchmarks (median of repeats after warm-up; JSON + table).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
for _name in NAMES:
    benchmark_app.command(_name, help=HELP[_name])(_make(_name))


def register(app: typer.Typer) -> None:
    app.add_typer(benchmark_app, name="benchmark")
