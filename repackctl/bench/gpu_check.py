"""The one-shot GPU check: the trainer's own step in four configurations, the sampler, extraction.

Run by ``benchmarks/gpu_check.sh`` (≤ 8 minutes on one GPU). Train step: LightningDiT-XL/1 on the
paper's 16×16×32 latent (``bench.train`` shape ``paper``), REPA on, through ``Trainer.step`` —

1. fp32 eager — the official recipe (the official stage 2 trains in fp32 eager);
2. bf16 eager — autocast, fp32 weights and optimizer state;
3. bf16 + regional compile (each block compiled);
4. bf16 + compile + fused Triton kernels (``--kernels triton``).

Each row gives img/s, MFU against the bf16 (or fp32) matmul peak measured in the same run, and the
peak memory. Then the sampler at 250 Euler steps with CFG (batched 2B) and extraction with a
DINOv3-B/16 (random weights) at 256². Writes JSON and a markdown table. On a CPU it runs the tiny
shapes instead, to check that the script works; those figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from repackctl import kernels
from repackctl.bench.common import BenchContext, env_info, measure
from repackctl.bench.train import SHAPES, build_trainer, matmul_peak
from repackctl.errors import script_main
from repackctl.files import refuse_foreign_output, write_text_atomic

VARIANTS = (  # (name, precision, compile, kernels)
    ("fp32 eager (official recipe)", "fp32", False, "eager"),
    ("bf16 eager", "bf16", False, "eager"),
    ("bf16 + compile", "bf16", True, "eager"),
    ("bf16 + compile + Triton kernels", "bf16", True, "triton"),
)


def step_row(ctx: BenchContext, name: str, precision: str, compile_: bool, kern: str) -> dict:
    """Median ``Trainer.step`` time, img/s, TFLOP/s and peak memory of one configuration."""
    from torch.utils.flop_counter import FlopCounterMode

    from repackctl.progress import null_progress

    p = SHAPES[ctx.size]
    kernels.select(kern if ctx.device.type == "cuda" else "eager")
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(p, ctx.device, Path(tmp), compile_=compile_, precision=precision)
        bar = null_progress("train", total=None).__enter__()

        def step() -> None:
            trainer.step()
            trainer._after_step(bar)

        step()  # compilation and allocator warm-up
        with FlopCounterMode(display=False) as counter:
            trainer.step()
        flops = float(counter.get_total_flops())
        m = measure(step, ctx)
        trainer.close()
    kernels.select("eager")
    peak_mem = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else 0
    return {
        "variant": name,
        "precision": precision,
        "compile": compile_,
        "kernels": kern,
        "step_s": m["median_s"],
        "img_per_s": p["batch"] / m["median_s"],
        "tflops": flops / m["median_s"] / 1e12,
        "peak_memory_gib": peak_mem / 2**30,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Every figure of the check, as one JSON-ready dict."""
    from repackctl.bench import run_benchmark

    p = SHAPES[ctx.size]
    rows = [step_row(ctx, *v) for v in VARIANTS]
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        peak, _ = matmul_peak(ctx, p["matmul"], dtype)
        peaks[str(dtype).replace("torch.", "")] = peak / 1e12
    for r in rows:
        peak = peaks["bfloat16" if r["precision"] == "bf16" else "float32"]
        r["mfu"] = r["tflops"] / peak
        r["speedup_vs_fp32"] = rows[0]["step_s"] / r["step_s"]
    from repackctl.bench import sample as bench_sample

    # the sampler check is at the papers' 250 steps (the `sample` benchmark's paper size uses 50)
    bench_sample.STEPS = {**bench_sample.STEPS, "paper": 250}
    others = {}
    for name in ("sample", "extract"):
        result = run_benchmark(name, ctx).to_dict()
        others[name] = {"rows": result.get("rows"), "params": result.get("params")}
    return {
        "model": p["model"],
        "batch": p["batch"],
        "size": ctx.size,
        "peak_tflops": peaks,
        "train": rows,
        **others,
        "environment": env_info(ctx.device),
    }


def markdown(doc: dict[str, Any]) -> str:
    """The figures as the markdown page committed to ``benchmarks/results/gpu.md``."""
    env = doc["environment"]
    lines = [
        f"# GPU check — {_machine_title(env)}",
        "",
        _machine_line(env),
        "",
        f"{doc['model']}, batch {doc['batch']}, REPA on, `Trainer.step` (size `{doc['size']}`); "
        f"measured matmul peak: {doc['peak_tflops']}",
        "",
        "| variant | step (ms) | img/s | TFLOP/s | MFU | × fp32 eager | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["train"]:
        lines.append(
            f"| {r['variant']} | {1e3 * r['step_s']:.1f} | {r['img_per_s']:.1f} | "
            f"{r['tflops']:.1f} | {100 * r['mfu']:.1f} % | {r['speedup_vs_fp32']:.2f} | "
            f"{r['peak_memory_gib']:.1f} |"
        )
    for name in ("sample", "extract"):
        lines += ["", f"## {name}", "", "| case | median (s) | per s |", "|---|---|---|"]
        for row in doc[name]["rows"] or []:
            lines.append(
                f"| {row.get('case')} | {row.get('median_s', 0):.4f} | "
                f"{row.get('per_s') or 0:.1f} {row.get('unit', '')} |"
            )
    return "\n".join(lines) + "\n"


def _machine_title(env: dict[str, Any]) -> str:
    """The page's title: the GPU's name (``env_info``'s ``gpu``), or on a CPU self-check the
    device and the CPU's name. The environment has no ``device_name``: the title said ``cuda``."""
    if env.get("gpu"):
        return str(env["gpu"])
    return f"{env.get('device', '?')} ({env.get('cpu', '?')}; a self-check, no GPU figures)"


def _machine_line(env: dict[str, Any]) -> str:
    """What the figures depend on, as ``env_info`` recorded it (versions, memory, threads)."""
    keys = (("gpu_memory_gib", "GPU memory (GiB)"), ("cpu", "CPU"), ("cpu_count", "CPUs"),
            ("torch", "torch"), ("cuda", "torch built for CUDA"), ("cudnn", "cuDNN"),
            ("triton", "Triton"), ("torch_threads", "torch threads"), ("git_revision", "git"),
            ("hostname", "host"))  # fmt: skip
    parts = [f"{label} {env[k]}" for k, label in keys if env.get(k) is not None]
    return "Machine: " + (", ".join(parts) if parts else "not recorded") + "."


def _ours(path: Path) -> bool:
    """Whether ``path`` is a page or JSON this script wrote (or the committed page that waits for
    the first figures, whose title is the same): the only files it replaces."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".md":
        return text.startswith("# GPU check")
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"train", "environment", "peak_tflops"} <= doc.keys()


def check_outputs(*paths: str) -> None:
    """Refuse, before anything runs, an output that is a folder or an existing file this script
    did not write (a user's notes, another benchmark's result): it would be replaced."""
    hint = "pass a new file name to --out / --md, or move that file away first"
    for given in paths:
        path = Path(given).expanduser()
        refuse_foreign_output(path, _ours, "the output", "a GPU check result", hint)


@script_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/gpu.json")
    ap.add_argument("--md", default="benchmarks/results/gpu.md")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    check_outputs(args.out, args.md)
    cuda = torch.cuda.is_available()
    ctx = BenchContext(
        size="paper" if cuda else "tiny",
        warmup=2,
        repeats=args.repeats,
        device=torch.device("cuda" if cuda else "cpu"),
    )
    t0 = time.perf_counter()
    doc = run(ctx)
    doc["seconds"] = time.perf_counter() - t0
    check_outputs(args.out, args.md)  # again: the run took minutes
    for path, text in (
        (args.out, json.dumps(doc, indent=1, default=str) + "\n"),
        (args.md, markdown(doc)),
    ):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(path), text)
    print(markdown(doc))


if __name__ == "__main__":
    sys.exit(main())
