"""`repackctl train dit`: train a DiT on packed latents from the cache (+ REPA)."""

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
    err_console,
    handle_errors,
    is_main_process,
    kv_table,
    rank_progress,
    resolve,
    show_config,
)

train_app = typer.Typer(
    name="train",
    help="Train generators on cached latents (Stage 2: `train dit`).",
    no_args_is_help=True,
)


def _opt(help_text: str, *names: str):
    return typer.Option(*names, help=help_text)


def _resolve_with_preset(config: str | None, flags: dict):
    """Resolve settings; a preset replaces defaults only (file, env and flags still win)."""
    from repackctl.settings.dit import preset_values

    resolved = resolve(config, flags)
    preset = resolved.settings.train.preset
    values = preset_values(preset)
    from_preset = {
        f"train.{k}": v
        for k, v in values.items()
        if resolved.sources.get(f"train.{k}", "default") == "default"
    }
    if not from_preset:
        return resolved
    given = {k: v for k, v in flags.items() if v is not None}
    resolved = resolve(config, {**from_preset, **given})
    for key in from_preset:
        resolved.sources[key] = f"preset {preset}"
    return resolved


@handle_errors
def dit(
    size: Annotated[
        str | None, _opt("Model size: tiny (default), s, b, l, xl (paper: xl).", "--size")
    ] = None,
    patch: Annotated[
        int | None, _opt("Patch size 1, 2, 4, 8 (default: smallest of the arch).", "--patch")
    ] = None,
    arch: Annotated[
        str | None, _opt("Model family: lightningdit (default, official), dit, sit.", "--arch")
    ] = None,
    model: Annotated[
        str | None,
        _opt("A registered model id (e.g. a plugin's); overrides arch/size/patch.", "--model"),
    ] = None,
    preset: Annotated[
        str | None,
        _opt("small (default: CPU minutes) or paper (official XL/1 recipe defaults).", "--preset"),
    ] = None,
    name: Annotated[
        str | None, _opt("Run name (default dit-<model>); the same name resumes.", "--name")
    ] = None,
    latents: Annotated[
        str | None, _opt("Packed-latent id in the cache (default: newest).", "--latents")
    ] = None,
    pack_run: Annotated[
        str | None, _opt("Use the newest latents encoded by this pack run.", "--pack-run")
    ] = None,
    entry: Annotated[
        str | None, _opt("Cache entry (dataset--split--res) to take latents from.", "--entry")
    ] = None,
    features: Annotated[
        str | None, _opt("Encoder features for REPA (default: the pack's encoder).", "--features")
    ] = None,
    latent_sampling: Annotated[
        str | None,
        _opt("mean (posterior mean) or sample (fresh posterior sample).", "--latent-sampling"),
    ] = None,
    in_memory: Annotated[
        bool | None,
        _opt(
            "Load arrays into memory (default: when < 2 GiB) or read chunk blocks.",
            "--in-memory/--no-in-memory",
        ),
    ] = None,
    flip: Annotated[
        bool | None, _opt("Random horizontal flip per sample.", "--flip/--no-flip")
    ] = None,
    steps: Annotated[int | None, _opt("Optimizer steps.", "--steps")] = None,
    global_batch: Annotated[
        int | None, _opt("Samples per step over all processes.", "--global-batch", "-b")
    ] = None,
    grad_accum: Annotated[
        int | None, _opt("Micro-batches per process and step.", "--grad-accum")
    ] = None,
    lr: Annotated[float | None, _opt("AdamW learning rate.", "--lr")] = None,
    beta1: Annotated[float | None, _opt("AdamW beta1.", "--beta1")] = None,
    beta2: Annotated[float | None, _opt("AdamW beta2.", "--beta2")] = None,
    weight_decay: Annotated[float | None, _opt("AdamW weight decay.", "--weight-decay")] = None,
    schedule: Annotated[
        str | None, _opt("lr schedule: constant, warmup, step, cosine.", "--schedule")
    ] = None,
    warmup_steps: Annotated[int | None, _opt("Warmup steps.", "--warmup-steps")] = None,
    drop_step: Annotated[int | None, _opt("step schedule: drop at.", "--drop-step")] = None,
    drop_lr: Annotated[float | None, _opt("step schedule: lr after drop.", "--drop-lr")] = None,
    ema_decay: Annotated[float | None, _opt("EMA decay.", "--ema-decay")] = None,
    ema_warmup: Annotated[
        bool | None, _opt("Ramp the EMA decay up.", "--ema-warmup/--no-ema-warmup")
    ] = None,
    clip_grad: Annotated[float | None, _opt("Max gradient norm.", "--clip-grad")] = None,
    compile_: Annotated[
        bool | None, _opt("torch.compile the model.", "--compile/--no-compile")
    ] = None,
    grad_checkpointing: Annotated[
        bool | None,
        _opt("Recompute activations in backward.", "--grad-checkpointing/--no-grad-checkpointing"),
    ] = None,
    qk_norm: Annotated[
        bool | None, _opt("Normalise queries/keys (NaN fix).", "--qk-norm/--no-qk-norm")
    ] = None,
    class_dropout: Annotated[float | None, _opt("Label dropout (CFG).", "--class-dropout")] = None,
    time_dist: Annotated[
        str | None, _opt("t distribution: logit_normal (official) or uniform.", "--time-dist")
    ] = None,
    time_shift: Annotated[
        float | None, _opt("Timestep shift (> 1: more noise).", "--time-shift")
    ] = None,
    cos_weight: Annotated[float | None, _opt("Weight of the 1 − cos term.", "--cos-weight")] = None,
    repa_weight: Annotated[
        float | None, _opt("REPA weight λ (0.5; 0 = off).", "--repa-weight")
    ] = None,
    repa_depth: Annotated[
        int | None, _opt("Align after this block (default 8/28 of depth).", "--repa-depth")
    ] = None,
    repa_stop_step: Annotated[
        int | None, _opt("Switch REPA off from this step on.", "--repa-stop-step")
    ] = None,
    ckpt_every: Annotated[int | None, _opt("Checkpoint every N steps.", "--ckpt-every")] = None,
    keep_last: Annotated[int | None, _opt("Checkpoints kept (0 = all).", "--keep-last")] = None,
    log_every: Annotated[int | None, _opt("Metrics every N steps.", "--log-every")] = None,
    max_nonfinite_steps: Annotated[
        int | None,
        _opt("Stop after N non-finite steps in a row.", "--max-nonfinite-steps"),
    ] = None,
    image_every: Annotated[
        int | None, _opt("Sample grid every N steps (0 = never).", "--image-every")
    ] = None,
    cache: CacheOpt = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Train a DiT on packed latents, with REPA against the cached encoder tokens.

    Uses the newest packed latents in the cache unless --latents/--pack-run say otherwise;
    running the same command again resumes from the newest checkpoint. Several processes:
    `torchrun --nproc_per_node 8 -m repackctl train dit ...`.

    Examples: `repackctl train dit --size xl --patch 1` ·
    `repackctl train dit --size tiny --steps 500 --name dit-tiny` ·
    `repackctl train dit --preset paper`
    """
    flags = {
        "cache": cache,
        "runs": runs,
        "seed": seed,
        "device": device,
        "precision": precision,
        "train.size": size,
        "train.patch": patch,
        "train.arch": arch,
        "train.model": model,
        "train.preset": preset,
        "train.name": name,
        "train.latents": latents,
        "train.pack_run": pack_run,
        "train.entry": entry,
        "train.features": features,
        "train.latent_sampling": latent_sampling,
        "train.in_memory": in_memory,
        "train.flip": flip,
        "train.steps": steps,
        "train.global_batch": global_batch,
        "train.grad_accum": grad_accum,
        "train.lr": lr,
        "train.beta1": beta1,
        "train.beta2": beta2,
        "train.weight_decay": weight_decay,
        "train.schedule": schedule,
        "train.warmup_steps": warmup_steps,
        "train.drop_step": drop_step,
        "train.drop_lr": drop_lr,
        "train.ema_decay": ema_decay,
        "train.ema_warmup": ema_warmup,
        "train.clip_grad": clip_grad,
        "train.compile": compile_,
        "train.grad_checkpointing": grad_checkpointing,
        "train.qk_norm": qk_norm,
        "train.class_dropout": class_dropout,
        "train.time_dist": time_dist,
        "train.time_shift": time_shift,
        "train.cos_weight": cos_weight,
        "train.repa_weight": repa_weight,
        "train.repa_depth": repa_depth,
        "train.repa_stop_step": repa_stop_step,
        "train.ckpt_every": ckpt_every,
        "train.keep_last": keep_last,
        "train.log_every": log_every,
        "train.max_nonfinite_steps": max_nonfinite_steps,
        "train.image_every": image_every,
    }
    resolved = _resolve_with_preset(config, flags)
    if show:
        show_config(resolved, ("train",))
        return
    from repackctl.dit.run import train_dit

    main = is_main_process()
    out = train_dit(resolved.settings, rank_progress(main), config_record=resolved.to_dict())
    if not main:
        return
    r = out.result
    if out.grid_note:
        err_console.print(f"[yellow]note:[/] {out.grid_note}", highlight=False)
    logs = r.last_logs
    rows = [
        ("run", out.run_dir),
        ("model", f"{out.model_id} ({out.num_params / 1e6:.2f} M params)"),
        ("latents", f"{out.entry} / {out.latents}"),
        ("latent shape", "×".join(str(v) for v in out.latent_shape)),
        ("samples", f"{out.num_samples} ({'in memory' if out.in_memory else 'chunk blocks'})"),
        ("REPA features", out.features or "off"),
        ("step", r.step if r.resumed_from is None else f"{r.step} (resumed at {r.resumed_from})"),
        ("checkpoint", r.checkpoint),
    ]
    for key in ("loss/model", "loss/mse", "loss/cos", "loss/repa"):
        if key in logs:
            rows.append((key, f"{logs[key]:.4f}"))
    rows.append(("speed", f"{r.steps_per_s:.2f} steps/s"))
    if r.bad_steps:
        rows.append(("skipped steps", r.bad_steps))
    console.print(kv_table("train dit", rows))


def register(app: typer.Typer) -> None:
    train_app.command("dit")(dit)
    app.add_typer(train_app, name="train")
