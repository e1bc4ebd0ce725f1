"""`repackctl evaluate recon` / `evaluate probe`: scores of a pack run (stage 1).

The ``evaluate`` group lives in ``cli/evaluate.py``; it adds these two commands with
``register_into(evaluate_app)``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    DeviceOpt,
    RunsOpt,
    SeedOpt,
    ShowConfigOpt,
    console,
    handle_errors,
    kv_table,
    resolve,
    rich_progress,
    show_config,
)

RunOpt = Annotated[
    str | None, typer.Option("--run", "-r", help="Pack run name (or checkpoint folder) to score.")
]
EvalSplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Held-out split to score on (default val; a folder without split folders gets one "
        "from `repackctl extract --split val --val-fraction F`).",
    ),
]
EvalEntryOpt = Annotated[
    str | None, typer.Option("--entry", help="Held-out cache entry name (instead of --split).")
]
EvalNumOpt = Annotated[
    int | None, typer.Option("--num", "-n", help="Score at most N held-out images.")
]


def _common(run, split, entry, num, cache, runs, seed, device) -> dict:
    return {
        "cache": cache,
        "runs": runs,
        "seed": seed,
        "device": device,
        "pack.run": run,
        "pack.eval_split": split,
        "pack.eval_entry": entry,
        "pack.eval_num": num,
    }


@handle_errors
def recon(
    run: RunOpt = None,
    split: EvalSplitOpt = None,
    entry: EvalEntryOpt = None,
    num: EvalNumOpt = None,
    inception_weights: Annotated[
        str | None,
        typer.Option(help="Inception-V3 weights file (torch-fidelity's) to also compute rFID."),
    ] = None,
    grid_images: Annotated[
        int | None, typer.Option(help="Images in the side-by-side grid PNG.")
    ] = None,
    cache: CacheOpt = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """PSNR, SSIM (and rFID) of a pack run's reconstructions on a held-out split, plus a grid PNG.

    Example: `repackctl evaluate recon --run pack-builtin --split val`
    """
    resolved = resolve(
        config,
        _common(run, split, entry, num, cache, runs, seed, device)
        | {"pack.inception_weights": inception_weights, "pack.grid_images": grid_images},
    )
    if show:
        show_config(resolved, ("pack",))
        return
    from repackctl.evaluate.pack import evaluate_recon

    r = evaluate_recon(resolved.settings, rich_progress)
    rows = [
        ("run", f"{r.run} ({r.method}, latent {tuple(r.latent_shape)})"),
        ("entry", f"{r.entry} ({r.n} images)"),
        ("PSNR", f"{r.psnr:.2f} dB" if r.psnr is not None else "inf (identical)"),
        ("SSIM", f"{r.ssim:.4f}"),
        ("rFID", f"{r.rfid:.2f}" if r.rfid is not None else "- (no --inception-weights)"),
        ("grid", r.grid),
    ]
    console.print(kv_table("evaluate recon", rows))
    for note in r.notes:
        console.print(f"note: {note}", highlight=False)


@handle_errors
def probe(
    run: RunOpt = None,
    split: EvalSplitOpt = None,
    entry: EvalEntryOpt = None,
    num: EvalNumOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of each linear probe.")] = None,
    cache: CacheOpt = None,
    runs: RunsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Linear-probe top-1 of raw encoder tokens, PCA-d and the pack run's latents (paper table).

    Trained on the run's training split, scored on the held-out split (mean-pooled features).

    Example: `repackctl evaluate probe --run pack-builtin`
    """
    resolved = resolve(
        config,
        _common(run, split, entry, num, cache, runs, seed, device) | {"pack.probe_epochs": epochs},
    )
    if show:
        show_config(resolved, ("pack",))
        return
    from repackctl.evaluate.pack import evaluate_probe

    report = evaluate_probe(resolved.settings, rich_progress)
    console.print(
        f"linear probe: train {report.train_entry} ({report.n_train}) → "
        f"eval {report.eval_entry} ({report.n_eval}), {report.num_classes} classes; "
        f"PCA-{report.rows[1].dims} explains {100 * report.pca_explained:.1f}% of token variance",
        highlight=False,
    )
    console.print(report.table(), highlight=False, markup=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


def register_into(evaluate_app: typer.Typer) -> None:
    """Add ``recon`` and ``probe`` to the ``evaluate`` command group."""
    evaluate_app.command("recon")(recon)
    evaluate_app.command("probe")(probe)
