"""`repackctl captions`: captions of cache entries → cached text features (once per caption)."""

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


@settings_command("captions", common=("cache", "device"))
def captions(resolved: ResolvedSettings) -> None:
    """Encode every caption of every image of a cache entry with a frozen text encoder.

    Built-in entries describe their images themselves; folder entries take a JSONL/CSV index
    (--captions FILE) or MS-COCO 2017 (--captions coco:ROOT). Resumable: run it again after an
    interruption; an edited caption source is refused (remove the old features first). Needed
    before `repackctl train t2i`. The text encoder runs in fp32 (there is no --precision).

    Without --entry: the train-split built-in entry (image-folder entry with --captions); among
    several, the one with packed latents, and if that still leaves several, pass --entry. For
    built-in data the val-split entries of the same resolution follow (`sample` takes its default
    prompts from their captions).

    Example: `repackctl captions --entry builtin-n2000--train--64px --text-encoder minilm`
    """
    from repackctl.captions_cache import run_all_captions

    main = is_main_process()
    results = run_all_captions(resolved.settings, rank_progress(main))
    if not main:
        return
    for result in results:
        for name in result.healed:
            err_console.print(
                f"[yellow]Warning:[/] rewrote text/{result.text_id}/{name} (it was damaged)",
                markup=True,
                highlight=False,
            )
        warn_listed(result.skipped, "skipped")
        cut = "unknown" if result.truncated is None else result.truncated
        rows = [
            ("entry", result.entry),
            ("text features", f"text/{result.text_id}"),
            ("images", result.n),
            ("captions", f"{result.captions} (at most {result.max_captions} per image)"),
            ("cut to length", cut),
            ("written now", result.written),
            ("already done", result.already_done),
            ("skipped", len(result.skipped)),
            ("time", f"{result.seconds:.1f} s"),
        ]
        console.print(kv_table("captions", rows))


def register(app: typer.Typer) -> None:
    app.command("captions")(captions)
