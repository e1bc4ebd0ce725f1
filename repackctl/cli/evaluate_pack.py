"""`repackctl evaluate recon` / `evaluate probe`: scores of a pack run (stage 1).

The ``evaluate`` group lives in ``cli/evaluate.py``; it adds these two commands with
``register_into(evaluate_app)``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from repackctl.cli.common import console, kv_table, note_line, rich_progress
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings

# the held-out side of a pack run, as `evaluate recon|probe` name it
EVAL = ("eval_split", "eval_entry", "eval_num")
EVAL_FLAGS = {"eval_split": "--split", "eval_entry": "--entry", "eval_num": "--num"}


@settings_command(
    "pack",
    include=("run", *EVAL, "inception_weights", "grid_images"),
    flags=EVAL_FLAGS,
    common=("cache", "runs", "seed", "device"),
)
def recon(resolved: ResolvedSettings) -> None:
    """PSNR, SSIM (and rFID) of a pack run's reconstructions on a held-out split, plus a grid PNG.

    Example: `repackctl evaluate recon --run pack-builtin --split val`
    """
    from repackctl.evaluate.pack import evaluate_recon

    r = evaluate_recon(resolved.settings, rich_progress)
    rows = [
        ("run", f"{r.run} ({r.method}, latent {tuple(r.latent_shape)})"),
        ("checkpoint", f"{Path(r.checkpoint).name} (EMA weights)"),
        ("entry", f"{r.entry} ({r.n} images)"),
        ("PSNR", f"{r.psnr:.2f} dB" if r.psnr is not None else "inf (identical)"),
        ("SSIM", f"{r.ssim:.4f}"),
        ("rFID", f"{r.rfid:.2f}" if r.rfid is not None else "- (no --inception-weights)"),
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
