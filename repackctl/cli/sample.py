"""`repackctl sample`: DiT run → PNGs, ADM samples.npz, grid and protocol card."""

from __future__ import annotations

import typer

from repackctl.cli.common import (
    check_samples_root,
    console,
    is_main_process,
    kv_table,
    rank_progress,
)
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings


@settings_command("sample", common=("cache", "runs", "samples", "seed", "device", "precision"))
def sample(resolved: ResolvedSettings) -> None:
    """Generate N samples from a DiT run: latents → pack decoder → (refiner) → PNGs + ADM npz.

    Resumable (run it again after an interruption, with the same --batch-size and device type:
    the folder records them, and on the CPU its thread count, which later calls compute with) and
    multi-process (`torchrun --nproc_per_node 8 -m repackctl sample -r RUN -n 50000`); images
    depend on the seed and their index, and round by batch shape (±1/255).

    Example: `repackctl sample --run dit-tiny -n 100 --steps 50 --cfg 4`
    """
    from repackctl.sample.run import run_sample
    from repackctl.sample.t2i import summary_rows

    if resolved.sources.get("samples") == "flag":  # `--samples 100` meant as a count
        given = resolved.settings.samples
        check_samples_root(given, f"-n {given} (`repackctl sample -r RUN -n {given}`)")
    main = is_main_process()
    source = resolved.sources.get("precision", "default")
    result = run_sample(resolved.settings, rank_progress(main), precision_source=source)
    if not main:
        return
    p = result.protocol
    rows = [
        ("folder", result.out_dir),
        ("samples", f"{result.num} ({result.written} now, {result.already_done} already done)"),
        ("image", f"{result.image_shape} uint8"),
        ("sampler", f"{p['sampler']}, {p['steps']} steps, shift {p['shift']:g}"),
        ("guidance", _guidance(p)),
        ("weights", p.get("weights")),
        ("NFE per sample", result.nfe),
        ("labels", p["label_scheme"]),
        ("refined", result.refined),
        *summary_rows(p),
        ("time", f"{result.seconds:.1f} s ({result.images_per_s:.2f} img/s)"),
    ]
    if result.threads is not None:  # made on the CPU, with the folder's recorded count
        rows.insert(-1, ("CPU threads", f"{result.threads} per process (the folder's)"))
    console.print(kv_table("sample", rows))


def _guidance(p: dict) -> str:
    """The guidance row: autoguidance names its guide run and checkpoint (never plain CFG)."""
    from repackctl.evaluate.generative import guide_text

    scale = f"scale {p['cfg_scale']:g} for t in {p['cfg_interval']}"
    guide = guide_text(p.get("guide"))
    return f"{guide}, {scale}" if guide else scale


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
