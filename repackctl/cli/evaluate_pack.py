"""`repackctl evaluate recon` / `evaluate probe`: scores of a pack run (stage 1).

The ``evaluate`` group lives in ``cli/evaluate.py``; it adds these two commands with
``register_into(evaluate_app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from repackctl.cli.common import console, kv_table, note_line, rich_progress
from repackctl.cli.options import field_parameter, settings_command
from repackctl.errors import ConfigError
from repackctl.settings import ResolvedSettings
from repackctl.settings.checks import undo_given, user_given

# the held-out side of a pack run, as `evaluate recon|probe` name it
EVAL = ("eval_split", "eval_entry", "eval_num")
EVAL_FLAGS = {"eval_split": "--split", "eval_entry": "--entry", "eval_num": "--num"}
#: how specific each layer a user gives a value through is (a flag overrides the environment,
#: which overrides the config file)
_LAYER_RANK = {"file": 1, "env": 2, "flag": 3}


def _layer(source: str) -> int:
    return _LAYER_RANK.get(source.split(" ")[0], 0)


def _evaluate_option(name: str) -> Any:
    """The option of an ``[evaluate]`` setting as `evaluate fid` declares it (flag, help text,
    default), for a command of the ``pack`` section: ``recon --fd-method`` is fid's."""
    from repackctl.settings.evaluate import EvaluateSettings

    info = EvaluateSettings.model_fields[name]
    return field_parameter(name, info, EvaluateSettings, None).annotation


#: `evaluate recon --fd-method`: the ``evaluate.fd_method`` setting of `evaluate fid`
FdMethodOption = _evaluate_option("fd_method")


def check_ignored_eval_settings(resolved: ResolvedSettings, command: str) -> None:
    """Refuse the settings of `evaluate recon|probe` that the run would ignore.

    ``--split`` beside ``--entry`` (given as specifically, e.g. both flags): the entry is the
    one scored and the split was dropped without a word. A lower layer's split (a config file's
    ``eval_split`` under an ``--entry`` flag) is overridden as any setting is. ``recon`` draws
    nothing at random (posterior means, a fixed class-balanced subset), so a ``--seed`` flag
    changed nothing there; a seed from the environment or a config file is everyone's.
    """
    cfg, sources = resolved.settings.pack, resolved.sources
    split_from = sources.get("pack.eval_split", "default")
    entry_from = sources.get("pack.eval_entry", "default")
    if cfg.eval_entry and user_given(split_from) and _layer(split_from) >= _layer(entry_from):
        raise ConfigError(
            f"pack.eval_split = {cfg.eval_split!r} (from {split_from}) is given with "
            f"pack.eval_entry = {cfg.eval_entry!r} (from {entry_from}): the entry is the one "
            f"scored, so the split would be ignored; nothing was scored",
            f"{undo_given(split_from, '--split')} to score {cfg.eval_entry}, or "
            f"{undo_given(entry_from, '--entry')} to score the run's {cfg.eval_split!r} split",
        )
    if command == "recon" and sources.get("evaluate.fd_method") == "flag":
        if not cfg.inception_weights:
            raise ConfigError(
                f"--fd-method {resolved.settings.evaluate.fd_method} is given, but without "
                "--inception-weights `evaluate recon` computes no rFID (the only Fréchet "
                "distance it reports): it would be ignored",
                "drop --fd-method, or pass --inception-weights FILE to compute the rFID",
            )
    if command == "recon" and sources.get("seed") == "flag":
        raise ConfigError(
            f"--seed {resolved.settings.seed} is given, but `evaluate recon` draws nothing at "
            "random (it decodes posterior means of a fixed subset): it would be ignored",
            "drop --seed: every seed gives the same scores (`evaluate probe` uses it)",
        )


@settings_command(
    "pack",
    include=("run", *EVAL, "inception_weights", "grid_images"),
    flags=EVAL_FLAGS,
    common=("cache", "runs", "seed", "device"),
    arguments={"fd_method": "evaluate.fd_method"},
)
def recon(resolved: ResolvedSettings, fd_method: FdMethodOption = None) -> None:
    """PSNR, SSIM (and rFID) of a pack run's reconstructions on a held-out split, plus a grid PNG.

    `--fd-method` is `evaluate fid`'s: the rFID's Fréchet algorithm, recorded in the report.

    Example: `repackctl evaluate recon --run pack-builtin --split val`
    """
    from repackctl.evaluate.pack import evaluate_recon
    from repackctl.metrics.recon import psnr_text

    check_ignored_eval_settings(resolved, "recon")
    r = evaluate_recon(resolved.settings, rich_progress)
    rows = [
        ("run", f"{r.run} ({r.method}, latent {tuple(r.latent_shape)})"),
        ("checkpoint", f"{Path(r.checkpoint).name} (EMA weights)"),
        ("entry", f"{r.entry} ({r.n} images)"),
        ("PSNR", psnr_text(r.psnr, r.psnr_exact, r.n)),
        ("SSIM", f"{r.ssim:.4f}"),
        (
            "rFID",
            f"{r.rfid:.2f} ({r.fd_method})" if r.rfid is not None else "- (no --inception-weights)",
        ),
        ("grid", r.grid),
    ]
    console.print(kv_table("evaluate recon", rows))
    for note in r.notes[r.shown :]:  # the others were logged above the progress bar
        console.print(note_line(note), highlight=False)


@settings_command(
    "pack",
    include=("run", *EVAL, "probe_epochs"),
    flags={**EVAL_FLAGS, "probe_epochs": "--epochs"},
    common=("cache", "runs", "seed", "device"),
)
def probe(resolved: ResolvedSettings) -> None:
    """Linear-probe top-1 of raw encoder tokens, PCA-d and the pack run's latents (paper table).

    Trained on the run's training split, scored on the held-out split (mean-pooled features).

    Example: `repackctl evaluate probe --run pack-builtin`
    """
    from repackctl.evaluate.pack import evaluate_probe

    check_ignored_eval_settings(resolved, "probe")
    report = evaluate_probe(resolved.settings, rich_progress)
    console.print(
        f"linear probe of {report.run} {Path(report.checkpoint).name} (EMA weights), "
        f"{report.epochs} epochs, seed {report.seed}: train {report.train_entry} "
        f"({report.n_train}) → "
        f"eval {report.eval_entry} ({report.n_eval}), {report.num_classes} classes; "
        f"PCA-{report.rows[1].dims} explains {100 * report.pca_explained:.1f}% of token variance",
        highlight=False,
    )
    console.print(report.table(), highlight=False, markup=False)
    for note in report.notes[report.shown :]:  # the others were logged above the progress bar
        console.print(note_line(note), highlight=False)


def register_into(evaluate_app: typer.Typer) -> None:
    """Add ``recon`` and ``probe`` to the ``evaluate`` command group."""
    evaluate_app.command("recon")(recon)
    evaluate_app.command("probe")(probe)
