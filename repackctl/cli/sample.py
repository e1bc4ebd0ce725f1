"""`repackctl sample`: DiT run → PNGs, ADM samples.npz, grid and protocol card."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    ConfigOpt,
    DeviceOpt,
    PrecisionOpt,
    RunsOpt,
    SeedOpt,
    ShowConfigOpt,
    console,
    handle_errors,
    is_main_process,
    kv_table,
    rank_progress,
    resolve,
    show_config,
)


@handle_errors
def sample(
    run: Annotated[
        str | None, typer.Option("--run", "-r", help="DiT run name (under --runs) or folder.")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="Checkpoint of the run (step-NNNNNNN); default: latest.")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="ema (default) or model weights.")] = None,
    num: Annotated[
        int | None, typer.Option("--num", "-n", help="Number of samples N. Under torchrun use -n.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Samples per batch (images do not depend on it).")
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="balanced (N/classes each), random (seeded), or class ids '3,7'."),
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="euler, heun (ODE) or sde.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler updates (default 50).")] = None,
    shift: Annotated[
        float | None, typer.Option(help="Timestep shift, our convention (official 0.3 = 3.33).")
    ] = None,
    cfg: Annotated[float | None, typer.Option(help="Guidance scale; 1 = no guidance.")] = None,
    cfg_t_lo: Annotated[
        float | None, typer.Option(help="Guidance only for t >= this (t = 0 data).")
    ] = None,
    cfg_t_hi: Annotated[
        float | None, typer.Option(help="Guidance only for t <= this (official start 0.11 = 0.89).")
    ] = None,
    cfg_channels: Annotated[
        int | None, typer.Option(help="Legacy: guide only the first k channels (official 3).")
    ] = None,
    guide: Annotated[
        str | None, typer.Option(help="Autoguidance: a weaker DiT run used as the guide.")
    ] = None,
    guide_checkpoint: Annotated[str | None, typer.Option(help="Checkpoint of --guide.")] = None,
    refiner: Annotated[
        str | None, typer.Option(help="Refiner run applied after decoding (raw latents).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (default: derived name).")] = None,
    grid: Annotated[int | None, typer.Option(help="Images in grid.png (0: none).")] = None,
    samples: Annotated[
        str | None, typer.Option("--samples", help="Folder holding sample sets.")
    ] = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Generate N samples from a DiT run: latents → pack decoder → (refiner) → PNGs + ADM npz.

    Resumable (run it again after an interruption) and multi-process
    (`torchrun --nproc_per_node 8 -m repackctl sample -r RUN -n 50000`); images depend only on
    the seed and their index.

    Example: `repackctl sample --run dit-tiny -n 100 --steps 50 --cfg 4`
    """
    resolved = resolve(
        config,
        {
            "runs": runs,
            "samples": samples,
            "seed": seed,
            "device": device,
            "precision": precision,
            "sample.run": run,
            "sample.checkpoint": checkpoint,
            "sample.weights": weights,
            "sample.num": num,
            "sample.batch_size": batch_size,
            "sample.labels": labels,
            "sample.sampler": sampler,
            "sample.steps": steps,
            "sample.shift": shift,
            "sample.cfg": cfg,
            "sample.cfg_t_lo": cfg_t_lo,
            "sample.cfg_t_hi": cfg_t_hi,
            "sample.cfg_channels": cfg_channels,
            "sample.guide": guide,
            "sample.guide_checkpoint": guide_checkpoint,
            "sample.refiner": refiner,
            "sample.out": out,
            "sample.grid": grid,
        },
    )
    if show:
        show_config(resolved, ("sample",))
        return
    from repackctl.sample.run import run_sample

    main = is_main_process()
    result = run_sample(resolved.settings, rank_progress(main))
    if not main:
        return
    p = result.protocol
    rows = [
        ("folder", result.out_dir),
        ("samples", f"{result.num} ({result.written} now, {result.already_done} already done)"),
        ("image", f"{result.image_shape} uint8"),
        ("sampler", f"{p['sampler']}, {p['steps']} steps, shift {p['shift']:g}"),
        ("guidance", f"scale {p['cfg_scale']:g} for t in {p['cfg_interval']}"),
        ("NFE per sample", result.nfe),
        ("labels", p["label_scheme"]),
        ("refined", result.refined),
        ("time", f"{result.seconds:.1f} s ({result.images_per_s:.2f} img/s)"),
    ]
    console.print(kv_table("sample", rows))


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
