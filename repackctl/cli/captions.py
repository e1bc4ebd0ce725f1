"""`repackctl captions`: captions of a cache entry → cached text features (once per caption)."""

from __future__ import annotations

import typer

from repackctl.cli.common import (
    console,
    err_console,
    is_main_process,
    kv_table,
    rank_progress,
    warn_listed,
)
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings


@settings_command("captions", common=("cache", "seed", "device", "precision", "num_workers"))
def captions(resolved: ResolvedSettings) -> None:
    """Encode every caption of every image of a cache entry with a frozen text encoder.

    Built-in entries describe their images themselves; folder entries take a JSONL/CSV index
    (--captions FILE) or MS-COCO 2017 (--captions coco:ROOT). Resumable: run it again after an
    interruption. Needed before `repackctl train t2i`.

    Example: `repackctl captions --entry builtin-n2000--train--64px --text-encoder minilm`
    """
    from repackctl.captions_cache import run_captions

    main = is_main_process()
    result = run_captions(resolved.settings, rank_progress(main))
    if not main:
        return
    for name in result.healed:
        err_console.print(
            f"[yellow]warning:[/] rewrote text/{result.text_id}/{name} (it was damaged)",
            highlight=False,
        )
    warn_listed(result.skipped, "skipped")
    rows = [
        ("entry", result.entry),
        ("text features", f"text/{result.text_id}"),
        ("images", result.n),
        ("captions", f"{result.captions} (at most {result.max_captions} per image)"),
        ("written now", result.written),
        ("already done", result.already_done),
        ("skipped", len(result.skipped)),
        ("time", f"{result.seconds:.1f} s"),
    ]
    console.print(kv_table("captions", rows))


def register(app: typer.Typer) -> None:
    app.command("captions")(captions)
