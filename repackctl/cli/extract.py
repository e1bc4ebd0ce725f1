"""`repackctl extract`: images → cache entry with frozen-encoder features."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    DeviceOpt,
    PrecisionOpt,
    SeedOpt,
    ShowConfigOpt,
    WorkersOpt,
    console,
    err_console,
    handle_errors,
    is_main_process,
    kv_table,
    rank_progress,
    resolve,
    show_config,
)


@handle_errors
def extract(
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Encoder id: builtin (default), dinov3 (DINOv3 ViT-B/16), dinov2 (ViT-B/14), "
            "timm:NAME, or a plugin's id (`repackctl plugins`).",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Images: builtin (default), imagefolder:PATH, imagenet (root from settings) "
            "or imagenet:PATH.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Split of the data (train, val): a split folder of the data path."),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="For a folder without train/ and val/: hold out this seeded fraction of each "
            "class as split val (give it for --split train too, which then holds the rest)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Encoder weights: a .safetensors/.pth file, 'random' (seeded, for dry runs), "
            "or nothing for the default (shipped file or hub)."
        ),
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Take tokens of this block instead of the final layer.")
    ] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Crop size in pixels (default 64 builtin, 256 otherwise).")
    ] = None,
    num: Annotated[
        int | None,
        typer.Option("--num", "-n", help="Use N images (a seeded subset). Under torchrun use -n."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per encoder forward.")] = None,
    flips: Annotated[
        bool | None, typer.Option("--flips/--no-flips", help="Also encode mirrored images.")
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option("--strict/--no-strict", help="Fail (before writing) on unreadable images."),
    ] = None,
    chunk: Annotated[int | None, typer.Option(help="Samples per Zarr chunk (new entries).")] = None,
    shard: Annotated[
        int | None, typer.Option(help="Samples per Zarr shard = unit of work per process.")
    ] = None,
    cache: CacheOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    num_workers: WorkersOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Encode a dataset with a frozen encoder into the cache (both flips), resumably.

    Run it again after an interruption: finished shards are kept, the rest is done. Several
    processes split the work: `torchrun --nproc_per_node 8 -m repackctl extract ...`.

    Example: `repackctl extract --encoder dinov3 --data imagenet --weights dinov3_vitb16.pth`
    """
    resolved = resolve(
        config,
        {
            "cache": cache,
            "seed": seed,
            "device": device,
            "precision": precision,
            "num_workers": num_workers,
            "extract.encoder": encoder,
            "extract.data": data,
            "extract.split": split,
            "extract.val_fraction": val_fraction,
            "extract.weights": weights,
            "extract.layer": layer,
            "extract.resolution": resolution,
            "extract.num": num,
            "extract.batch_size": batch_size,
            "extract.flips": flips,
            "extract.strict": strict,
            "extract.chunk": chunk,
            "extract.shard": shard,
        },
    )
    if show:
        show_config(resolved, ("extract",))
        return
    from repackctl.extract import run_extract

    s = resolved.settings
    main = is_main_process()
    result = run_extract(s, rank_progress(main), config_record=resolved.to_dict())
    if not main:
        return
    for key, reason in result.skipped[:20]:
        err_console.print(f"[yellow]warning:[/] skipped {key}: {reason}", highlight=False)
    if len(result.skipped) > 20:
        err_console.print(f"[yellow]warning:[/] … and {len(result.skipped) - 20} more skipped")
    for key, message in result.warnings[:20]:
        err_console.print(f"[yellow]warning:[/] {key}: {message}", highlight=False)
    if len(result.warnings) > 20:
        err_console.print(f"[yellow]warning:[/] … and {len(result.warnings) - 20} more warnings")
    rows = [
        ("cache", s.cache),
        ("entry", result.entry),
        ("features", result.features),
        ("tokens", f"{result.tokens_shape} float16 (N, flips, T, C)"),
        ("written now", result.written),
        ("already done", result.already_done),
        ("skipped inputs", len(result.skipped)),
        ("time", f"{result.seconds:.1f} s ({result.images_per_s:.1f} img/s)"),
    ]
    console.print(kv_table("extract", rows))


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
