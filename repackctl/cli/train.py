"""`repackctl train dit`: train a DiT on packed latents from the cache (+ REPA)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from repackctl.cli.common import console, err_console, is_main_process, kv_table, rank_progress
from repackctl.cli.options import TRAIN_COMMON, settings_command
from repackctl.settings import ResolvedSettings
from repackctl.settings.t2i import NOT_T2I

train_app = typer.Typer(
    name="train",
    help="Train generators on cached latents (Stage 2: `train dit`, text-to-image: `train t2i`).",
    no_args_is_help=True,
)


@settings_command("dit", show=("dit",), common=TRAIN_COMMON)
def dit(resolved: ResolvedSettings) -> None:
    """Train a DiT on packed latents, with REPA against the cached encoder tokens.

    Uses the newest packed latents in the cache unless --latents/--pack-run say otherwise;
    running the same command again resumes from the newest checkpoint. Several processes:
    `torchrun --nproc_per_node 8 -m repackctl train dit ...`.

    Examples: `repackctl train dit --size xl --patch 1` ·
    `repackctl train dit --size tiny --steps 500 --name dit-tiny` ·
    `repackctl train dit --preset paper`
    """
    from repackctl.dit.run import train_dit

    main = is_main_process()
    out = train_dit(resolved.settings, rank_progress(main), config_record=resolved.to_dict())
    if not main:
        return
    _notes(out)
    memory = "in memory" if out.in_memory else "chunk blocks"
    middle = [
        ("latent shape", "×".join(str(v) for v in out.latent_shape)),
        ("samples", f"{out.num_samples} ({memory})"),
    ]
    console.print(kv_table("train dit", _result_rows(out, middle)))


def _notes(out: Any) -> None:
    """The run's notes on stderr: a latent-space sample grid, nothing left to train."""
    for note in (out.grid_note, out.idle_note):
        if note:
            err_console.print(f"[yellow]note:[/] {escape(note)}", markup=True, highlight=False)


# a run whose every save point was skipped (non-finite weights or steps) has no checkpoint
NO_CHECKPOINT = "none saved (each save point had non-finite values: see log.txt)"


def _result_rows(out: Any, middle: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The summary of a DiT or MMDiT run: run, model, latents, ``middle``, step, losses; for a
    run with nothing left to train, its checkpoint's step and last logged losses."""
    r = out.result
    logs = r.last_logs
    if r.resumed_from is None:
        step = r.step
    elif out.trained:
        step = f"{r.step} (resumed at {r.resumed_from})"
    else:
        step = f"{r.step} (nothing trained)"
    rows = [
        ("run", out.run_dir),
        ("model", f"{out.model_id} ({out.num_params / 1e6:.2f} M params)"),
        ("latents", f"{out.entry} / {out.latents}"),
        *middle,
        ("REPA features", out.features or "off"),
        ("step", step),
        ("checkpoint", r.checkpoint or NO_CHECKPOINT),
    ]
    for key in ("loss/model", "loss/mse", "loss/cos", "loss/repa"):
        if key in logs:
            rows.append((key, f"{logs[key]:.4f}"))
    if out.trained:
        # the training steps alone, then the whole of `fit` (checkpoint writes, image grids and
        # the final curves included, so lower than the bar's and the log's rates): both named
        rows.append(("speed", f"{r.loop_steps_per_s:.2f} steps/s (training steps alone)"))
        rows.append(("wall speed", f"{r.steps_per_s:.2f} steps/s (with checkpoints and plots)"))
    if r.bad_steps:
        rows.append(("skipped steps", r.bad_steps))
    return rows


@settings_command("t2i", show=("t2i",), exclude=NOT_T2I, common=TRAIN_COMMON)
def t2i(resolved: ResolvedSettings) -> None:
    """Train a text-to-image MMDiT on packed latents and cached caption features (+ REPA).

    Needs `repackctl captions` for the latents' cache entry first. Each step draws one of an
    image's captions at random; the null caption (features of "") replaces it with probability
    --caption-dropout. Running the same command again resumes from the newest checkpoint.

    Examples: `repackctl train t2i --steps 2000` ·
    `repackctl train t2i --model mmdit-s-2 --text-encoder clip`
    """
    from repackctl.dit.t2i_run import train_t2i

    main = is_main_process()
    out = train_t2i(resolved.settings, rank_progress(main), config_record=resolved.to_dict())
    if not main:
        return
    _notes(out)
    middle = [("captions", out.text_id), ("samples", out.num_samples)]
    console.print(kv_table("train t2i", _result_rows(out, middle)))


def register(app: typer.Typer) -> None:
    train_app.command("dit")(dit)
    train_app.command("t2i")(t2i)
    app.add_typer(train_app, name="train")
