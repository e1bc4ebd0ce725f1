"""`repackctl refine train|apply`: the Latent-Guided Refiner (RePack then Refine, stage 3)."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    ConfigOpt,
    DeviceOpt,
    RunsOpt,
    ShowConfigOpt,
    console,
    handle_errors,
    is_main_process,
    kv_table,
    rank_progress,
    resolve,
    show_config,
)
from repackctl.cli.options import TRAIN_COMMON, settings_command
from repackctl.settings import ResolvedSettings

refine_app = typer.Typer(
    help="Latent-Guided Refiner: train it on cached triplets, apply it to samples.",
    no_args_is_help=True,
)


@refine_app.command("train")
@settings_command("refine", exclude=("refiner",), common=TRAIN_COMMON)
def train(resolved: ResolvedSettings) -> None:
    """Build (image, reconstruction, raw latent) triplets in the cache, then train the refiner.

    Both steps resume after an interruption. Example:
    `repackctl refine train --pack-run pack-builtin --name refine-builtin`
    """
    from repackctl.refine.task import run_refine_train
    from repackctl.train.checkpoint import latest_checkpoint

    main = is_main_process()
    run_dir = run_refine_train(
        resolved.settings,
        rank_progress(main),
        sources=resolved.to_dict()["sources"],
        config_record=resolved.to_dict(),
    )
    if main:
        rows = [("run", run_dir), ("checkpoint", latest_checkpoint(run_dir))]
        console.print(kv_table("refine train", rows))


@refine_app.command("apply")
@handle_errors
def apply(
    samples_dir: Annotated[str, typer.Argument(help="A folder written by `repackctl sample`.")],
    refiner: Annotated[
        str | None, typer.Option("--refiner", help="Refiner run (or checkpoint folder).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    grid: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Images in grid.png (0 = no grid); default: as many as the samples folder's "
            "grid.png shows.",
        ),
    ] = None,
    runs: RunsOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    show: ShowConfigOpt = False,
) -> None:
    """Refine an existing samples folder into `<folder>--refine-<run>/` (PNGs, npz, card).

    Uses the raw latents stored in its latents.npy (or regenerates them from the DiT, on the
    device type the samples were made on). Its grid.png shows as many images as the samples
    folder's (--grid to choose).

    Example: `repackctl refine apply samples/dit--step-0001000--euler-50--cfg4--seed0 --refiner refine-builtin`
    """
    resolved = resolve(
        config,
        {
            "runs": runs,
            "device": device,
            "refine.refiner": refiner,
            "sample.batch_size": batch_size,
            "sample.grid": grid,
        },
    )
    if show:
        show_config(resolved, ("refine", "sample"))
        return
    from repackctl.sample.refine import run_refine_apply

    main = is_main_process()
    # a --grid (or a config file's / environment's grid) is the user's; else the source's
    given = resolved.settings.sample.grid if "sample.grid" in resolved.sources else None
    result = run_refine_apply(resolved.settings, samples_dir, rank_progress(main), grid=given)
    if main:
        rows = [
            ("folder", result.out_dir),
            ("samples", f"{result.num} ({result.written} now, {result.already_done} already done)"),
            ("latents", result.latents_source),
            ("time", f"{result.seconds:.1f} s"),
        ]
        console.print(kv_table("refine apply", rows))


def register(app: typer.Typer) -> None:
    app.add_typer(refine_app, name="refine")
