"""`repackctl pack train` / `pack encode`: stage 1 of RePack then Refine on cached features."""

from __future__ import annotations

import typer

from repackctl.cli.common import console, is_main_process, kv_table, rank_progress
from repackctl.cli.options import COMMON_KEYS, TRAIN_COMMON, settings_command
from repackctl.errors import ConfigError
from repackctl.settings import LAYER_ORDER, ResolvedSettings
from repackctl.settings.checks import undo_given, user_given

pack_app = typer.Typer(
    help="Stage 1: train the packing autoencoder (RePack or PCA) and write packed latents.",
    no_args_is_help=True,
)

ENCODE_FIELDS = ("encoder", "weights", "layer", "data", "split", "resolution", "num", "entry", "features", "run", "encode_batch_size")  # fmt: skip
# the pack reads its cached arrays itself (no DataLoader workers), and encoding runs in fp32
ENCODE_KEYS = tuple(k for k in COMMON_KEYS if k not in ("num_workers", "precision"))
# settings of `pack encode` and the pack evaluations (`evaluate recon` / `probe`) that the
# training does not read: not offered by `pack train`
EVAL_FIELDS = ("eval_split", "eval_entry", "eval_num", "inception_weights", "encode_batch_size", "probe_epochs")  # fmt: skip


@pack_app.command("train")
@settings_command("pack", exclude=EVAL_FIELDS, flags={"run": "--name"}, common=TRAIN_COMMON)
def train(resolved: ResolvedSettings) -> None:
    """Train the packing autoencoder on cached encoder tokens (resumes an existing run).

    Sizes not given follow a preset: `--preset auto` picks `small` (d=8, a few CPU minutes) on a
    CPU and for the built-in encoder, `paper` (d=32, ch 128, Adam 1e-5) on a GPU. Several processes: `torchrun --nproc_per_node 8 -m repackctl pack
    train ...`.

    Example: `repackctl pack train --encoder builtin --steps 2000 --name pack-builtin`
    """
    from repackctl.pack.task import run_pack_train
    from repackctl.train.checkpoint import latest_checkpoint, read_state
    from repackctl.train.shown import last_losses

    check_named_alone(resolved, "train")  # before the run folder is made
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
    # the losses logged up to the checkpoint shown: metrics.jsonl may hold rows past it (a kill
    # after the last save, a save skipped for non-finite values)
    last = last_losses(run_dir, int(state["step"])) if "step" in state else {}
    losses = ", ".join(f"{k[5:]} {v:.4g}" for k, v in last.items() if k != "loss/total")
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
@settings_command(
    "pack", include=ENCODE_FIELDS, flags={"encode_batch_size": "--batch-size"}, common=ENCODE_KEYS
)
def encode(resolved: ResolvedSettings) -> None:
    """Write packed latents (posterior mean and std, both flips) and their exact channel stats.

    Encodes the run's training entry unless --split/--entry name another one. Resumable; several
    processes split the shards: `torchrun --nproc_per_node 8 -m repackctl pack encode --run R`.

    Example: `repackctl pack encode --run pack-builtin`
    """
    from repackctl.pack.encode import run_pack_encode

    check_named_alone(resolved, "encode")
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


#: the settings that pick the entry by its source, which ``--entry`` names outright
ENTRY_SOURCE = {"split": "--split", "data": "--data", "num": "-n", "resolution": "--resolution"}
#: the settings that make the features id, which ``--features`` names outright
FEATURES_SOURCE = {"encoder": "--encoder", "weights": "--weights", "layer": "--layer"}
#: what each command does with the data named: (the data are the ones …, to …, nothing was …)
DOES = {
    "train": ("trained on", "train on", "nothing was trained"),
    "encode": ("encoded", "encode", "nothing was encoded"),
}


def check_named_alone(resolved: ResolvedSettings, command: str) -> None:
    """Refuse settings given beside ``--entry`` / ``--features`` that the ``command`` (``train``
    or ``encode``) would drop without a word: one check for both commands, before anything is
    read or written (``pack train --entry E --split val`` trained on E and recorded split val;
    ``--features F --encoder dinov3`` trained on F and recorded encoder dinov3). The library
    path (``pipeline.pack_train``) names entry and features without these flags."""
    _check_entry_alone(resolved, command)
    _check_features_alone(resolved, command)


def _rank(source: str) -> int:
    layer = source.split(" ")[0]
    return LAYER_ORDER.index(layer) if layer in LAYER_ORDER else -1


def _check_entry_alone(resolved: ResolvedSettings, command: str) -> None:
    """Refuse ``--split`` / ``--data`` / ``-n`` / ``--resolution`` given beside ``--entry`` (as
    specifically: a config file's split under an ``--entry`` flag is overridden as any setting
    is): the entry is the one used, and they were dropped without a word (`evaluate recon` /
    `probe` refuse the same). ``pack train`` without ``--features`` works the features id out
    from the encoder at ``--resolution``, so there that one acts and is kept."""
    cfg, sources = resolved.settings.pack, resolved.sources
    entry_from = sources.get("pack.entry", "default")
    if not cfg.entry or not user_given(entry_from):
        return
    keys = [k for k in ENTRY_SOURCE if k != "resolution" or command != "train" or cfg.features]
    ignored = [
        (key, sources[f"pack.{key}"])
        for key in keys
        if user_given(sources.get(f"pack.{key}", "default"))
        and _rank(sources[f"pack.{key}"]) >= _rank(entry_from)
    ]
    if ignored:
        _refuse_ignored(resolved, command, ignored, ("entry", entry_from), "the entry is the one")


def _check_features_alone(resolved: ResolvedSettings, command: str) -> None:
    """Refuse ``--encoder`` / ``--weights`` / ``--layer`` given (flag, environment or config
    file, whatever the layer) beside ``--features``, which names the features outright: weights
    and layer are then read by nothing, and the encoder only picks the preset (``auto``) and is
    recorded as the run's, so one other than the features' encoder is refused (the same one is
    kept: on a GPU ``--preset auto`` asks for it). A default or preset value is never refused."""
    from repackctl.pack.data import encoder_made_features

    cfg, sources = resolved.settings.pack, resolved.sources
    features_from = sources.get("pack.features", "default")
    if not cfg.features or not user_given(features_from):
        return
    ignored = []
    for key in FEATURES_SOURCE:
        source = sources.get(f"pack.{key}", "default")
        if not user_given(source):
            continue
        if key == "encoder" and encoder_made_features(resolved.settings, cfg.encoder, cfg.features):
            continue
        ignored.append((key, source))
    if ignored:
        why = "the features are the ones"
        note = " (an encoder only where it names the one that made them)"
        _refuse_ignored(resolved, command, ignored, ("features", features_from), why, note)


def _refuse_ignored(
    resolved: ResolvedSettings,
    command: str,
    ignored: list[tuple[str, str]],
    named: tuple[str, str],
    why: str,
    note: str = "",
) -> None:
    """The refusal of the settings ``ignored`` (``(key, source)``) given beside ``pack.NAME``
    (``named``: the name and where it came from), which ``command`` would drop: ``why`` they are
    dropped (``the entry is the one``), with ``note``."""
    cfg, (name, source) = resolved.settings.pack, named
    value = getattr(cfg, name)
    used, verb, nothing = DOES[command]
    flags = ENTRY_SOURCE | FEATURES_SOURCE
    listed = ", ".join(f"pack.{k} = {getattr(cfg, k)!r} (from {src})" for k, src in ignored)
    undo = ", ".join(undo_given(src, flags[k]) for k, src in ignored)
    raise ConfigError(
        f"{listed} given with pack.{name} = {value!r} (from {source}): {why} {used}, so they "
        f"would be ignored{note}; {nothing}",
        f"{undo} to {verb} {value}, or {undo_given(source, '--' + name)} to {verb} the {name} "
        "they name",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(pack_app, name="pack")
