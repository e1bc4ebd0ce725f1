"""`repackctl import official`: released RePack-then-Refine checkpoints → our run folders."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from repackctl.cli.common import (
    ConfigOpt,
    RunsOpt,
    console,
    err_console,
    handle_errors,
    kv_table,
    resolve,
    rich_progress,
)
from repackctl.settings.checks import INT_LIMIT

import_app = typer.Typer(help="Import checkpoints made by other code bases.", no_args_is_help=True)


def COUNT(**kwargs: str) -> object:  # noqa: N802 - used like typer.Option
    """``typer.Option`` of a whole number from 1 to ``INT_LIMIT``."""
    return typer.Option(min=1, max=INT_LIMIT, **kwargs)


@import_app.command("official")
@handle_errors
def official(
    out: Annotated[
        str, typer.Option("--out", help="Run name prefix: NAME-pack, NAME-dit, NAME-refine.")
    ],
    stage1: Annotated[
        str | None, typer.Option("--stage1", help="Stage-1 Lightning .ckpt (packing autoencoder).")
    ] = None,
    dit: Annotated[
        str | None, typer.Option("--dit", help="Stage-2 .pt with 'model' and 'ema' (LightningDiT).")
    ] = None,
    refiner: Annotated[
        str | None, typer.Option("--refiner", help="Stage-3 Lightning .ckpt (refiner).")
    ] = None,
    latent_stats: Annotated[
        str | None,
        typer.Option(help="Their latents_stats.pt (or JSON mean/std); needed with --dit."),
    ] = None,
    image_size: Annotated[int, COUNT(help="Image side the release was trained at.")] = 256,
    num_heads: Annotated[
        int | None,
        COUNT(
            help="DiT attention heads, needed for models without a RoPE table (with one, the "
            "count is read from it and a different value is an error)."
        ),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Allow full unpickling of files that weights_only loading refuses (runs code "
            "stored in the file: only for files you trust).",
        ),
    ] = False,
    runs: RunsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Map every tensor of the official release onto our models (error on leftovers).

    Their sampling settings (shift 0.3, interval start 0.11, CFG 15 on 3 channels, 250-point
    Euler) become the DiT run's sampling.json, in our conventions, used by `repackctl sample`.

    Example: `repackctl import official --stage1 s1.ckpt --dit 0320000.pt --refiner s3.ckpt
    --latent-stats latents_stats.pt --out repack-official`
    """
    resolved = resolve(config, {"runs": runs})
    from repackctl.convert.official import import_official

    result = import_official(
        runs=resolved.settings.runs,
        out=out,
        stage1=stage1,
        dit=dit,
        refiner=refiner,
        latent_stats=latent_stats,
        image_size=image_size,
        num_heads=num_heads,
        trust_pickle=trust_pickle,
        progress=rich_progress,
    )
    rows = [("pack run", result.pack), ("DiT run", result.dit), ("refiner run", result.refiner)]
    for report in result.reports:
        dropped = ", ".join(f"{n} {why}" for why, n in report.dropped.items()) or "none"
        rows.append((f"{report.stage} tensors", f"{report.mapped} mapped; dropped: {dropped}"))
    if result.sampling:
        rows.append(("sampling defaults", result.sampling))
    if result.kept:
        said = ", ".join(result.kept)
        rows.append(("kept", f"{said}: already in place, equal to this import (nothing written)"))
    console.print(kv_table("import official", rows))
    for report in result.reports:
        for note in report.notes:
            err_console.print(
                f"[yellow]note:[/] {escape(f'{report.stage}: {note}')}",
                markup=True,
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
