"""`repackctl pack train` / `pack encode`: stage 1 of RePack then Refine on cached features."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    CacheOpt,
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

pack_app = typer.Typer(
    help="Stage 1: train the packing autoencoder (RePack or PCA) and write packed latents.",
    no_args_is_help=True,
)

# ---- options shared by train and encode (all default to None: only given flags override) ------
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder", "-e", help="Encoder whose cached tokens are packed (as given to extract)."
    ),
]
DataOpt = Annotated[
    str | None, typer.Option("--data", "-d", help="Data source, as given to extract.")
]
SplitOpt = Annotated[str | None, typer.Option(help="Split of the cache entry (train, val).")]
WeightsOpt = Annotated[str | None, typer.Option(help="Encoder weights, as given to extract.")]
LayerOpt = Annotated[int | None, typer.Option(help="Encoder block, as given to extract.")]
ResolutionOpt = Annotated[int | None, typer.Option(help="Image size of the cache entry.")]
NumOpt = Annotated[
    int | None, typer.Option("--num", "-n", help="Number of images, as given to extract.")
]
EntryOpt = Annotated[
    str | None, typer.Option(help="Cache entry name (instead of data/split/resolution/num).")
]
FeaturesOpt = Annotated[
    str | None, typer.Option(help="Features id inside the entry (instead of encoder flags).")
]


def _source_flags(encoder, data, split, weights, layer, resolution, num, entry, features) -> dict:
    return {
        "pack.encoder": encoder,
        "pack.data": data,
        "pack.split": split,
        "pack.weights": weights,
        "pack.layer": layer,
        "pack.resolution": resolution,
        "pack.num": num,
        "pack.entry": entry,
        "pack.features": features,
    }


@pack_app.command("train")
@handle_errors
def train(
    name: Annotated[
        str | None,
        typer.Option("--name", help="Run name under --runs (default pack-<encoder>-<method>)."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="repack (learned KL projection, default) or pca (the baseline)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default from preset).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Global batch over all processes (default 32 / 16).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam lr (paper 1e-5; small preset 2e-3).")
    ] = None,
    latent_channels: Annotated[
        int | None, typer.Option("--latent-channels", "-c", help="Packed channels d.")
    ] = None,
    ch: Annotated[int | None, typer.Option(help="Decoder base width.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="auto (paper for DINO-width tokens, else small), paper or small."),
    ] = None,
    gan_start: Annotated[int | None, typer.Option(help="First step of the GAN loss.")] = None,
    lpips_weights: Annotated[
        str | None,
        typer.Option(help="Local LPIPS-VGG weights file; without it the perceptual loss is off."),
    ] = None,
    ckpt_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    image_every: Annotated[
        int | None, typer.Option(help="Steps between recon grid PNGs (0 = never).")
    ] = None,
    log_every: Annotated[int | None, typer.Option(help="Steps between metric lines.")] = None,
    max_nonfinite_steps: Annotated[
        int | None, typer.Option(help="Stop after N non-finite steps in a row.")
    ] = None,
    in_memory: Annotated[
        bool | None,
        typer.Option(
            "--in-memory/--blocks", help="Load the cache into memory, or read chunk blocks."
        ),
    ] = None,
    encoder: EncoderOpt = None,
    data: DataOpt = None,
    split: SplitOpt = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    resolution: ResolutionOpt = None,
    num: NumOpt = None,
    entry: EntryOpt = None,
    features: FeaturesOpt = None,
    cache: CacheOpt = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Train the packing autoencoder on cached encoder tokens (resumes an existing run).

    Sizes not given follow a preset picked from the encoder: the paper's (d=32, ch 128, Adam
    1e-5) for DINO encoders, a small one (d=8) for the built-in encoder that trains in about a
    minute on a laptop CPU. Several processes: `torchrun --nproc_per_node 8 -m repackctl pack
    train ...`.

    Example: `repackctl pack train --encoder builtin --steps 2000 --name pack-builtin`
    """
    resolved = resolve(
        config,
        {
            "cache": cache,
            "runs": runs,
            "seed": seed,
            "device": device,
            "precision": precision,
            **_source_flags(encoder, data, split, weights, layer, resolution, num, entry, features),
            "pack.run": name,
            "pack.method": method,
            "pack.steps": steps,
            "pack.batch_size": batch_size,
            "pack.lr": lr,
            "pack.latent_channels": latent_channels,
            "pack.ch": ch,
            "pack.preset": preset,
            "pack.gan_start": gan_start,
            "pack.lpips_weights": lpips_weights,
            "pack.ckpt_every": ckpt_every,
            "pack.image_every": image_every,
            "pack.log_every": log_every,
            "pack.max_nonfinite_steps": max_nonfinite_steps,
            "pack.in_memory": in_memory,
        },
    )
    if show:
        show_config(resolved, ("pack",))
        return
    from repackctl.pack.task import run_pack_train
    from repackctl.train.checkpoint import latest_checkpoint, read_state
    from repackctl.train.logging import read_metrics

    main = is_main_process()
    run_dir = run_pack_train(
        resolved.settings, rank_progress(main), config_record=resolved.to_dict()
    )
    if not main:
        return
    ckpt = latest_checkpoint(run_dir)
    state = read_state(ckpt) if ckpt else {}
    extra = state.get("extra", {})
    plan = extra.get("plan", {})
    metrics = read_metrics(run_dir)
    last = metrics[-1] if metrics else {}
    losses = ", ".join(
        f"{k[5:]} {v:.4g}" for k, v in last.items() if k.startswith("loss/") and k != "loss/total"
    )
    rows = [
        ("run", run_dir),
        ("checkpoint", ckpt),
        ("method / preset", f"{plan.get('method')} / {plan.get('preset')}"),
        ("latent (d, h, w)", tuple(extra.get("latent_shape", ()))),
        ("features", extra.get("cache", {}).get("features")),
        ("steps", state.get("step")),
        ("last losses", losses or "-"),
        ("next", f"repackctl pack encode --run {run_dir.name}"),
    ]
    console.print(kv_table("pack train", rows))


@pack_app.command("encode")
@handle_errors
def encode(
    run: Annotated[
        str | None,
        typer.Option(
            "--run", "-r", help="Pack run name (or checkpoint folder); -r under torchrun."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per projection forward.")] = None,
    encoder: EncoderOpt = None,
    data: DataOpt = None,
    split: SplitOpt = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    resolution: ResolutionOpt = None,
    num: NumOpt = None,
    entry: EntryOpt = None,
    features: FeaturesOpt = None,
    cache: CacheOpt = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Write packed latents (posterior mean and std, both flips) and their exact channel stats.

    Encodes the run's training entry unless --split/--entry name another one. Resumable; several
    processes split the shards: `torchrun --nproc_per_node 8 -m repackctl pack encode --run R`.

    Example: `repackctl pack encode --run pack-builtin`
    """
    resolved = resolve(
        config,
        {
            "cache": cache,
            "runs": runs,
            "seed": seed,
            "device": device,
            **_source_flags(encoder, data, split, weights, layer, resolution, num, entry, features),
            "pack.run": run,
            "pack.encode_batch_size": batch_size,
        },
    )
    if show:
        show_config(resolved, ("pack",))
        return
    from repackctl.pack.encode import run_pack_encode

    main = is_main_process()
    result = run_pack_encode(resolved.settings, rank_progress(main))
    if not main:
        return
    stats = result.stats or {}
    mean, std = stats.get("mean", []), stats.get("std", [])
    rows = [
        ("entry", result.entry),
        ("latents", result.pack_id),
        ("shape", f"{result.latent_shape} float16 (N, flips, d, h, w)"),
        ("written now", result.written),
        ("already done", result.already_done),
        ("stats count", stats.get("count", "-")),
        (
            "channel mean",
            "[" + ", ".join(f"{v:.3g}" for v in mean[:8]) + ("…]" if len(mean) > 8 else "]"),
        ),
        (
            "channel std",
            "[" + ", ".join(f"{v:.3g}" for v in std[:8]) + ("…]" if len(std) > 8 else "]"),
        ),
        ("stats file", result.stats_file or "- (not the training split)"),
        ("time", f"{result.seconds:.1f} s"),
    ]
    console.print(kv_table("pack encode", rows))


def register(app: typer.Typer) -> None:
    app.add_typer(pack_app, name="pack")
