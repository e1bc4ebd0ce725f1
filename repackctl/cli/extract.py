"""`repackctl extract`: images → cache entry with frozen-encoder features."""

from __future__ import annotations

import typer

from repackctl.cli.common import console, is_main_process, kv_table, rank_progress, warn_listed
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings


@settings_command("extract", common=("cache", "seed", "device", "precision", "num_workers"))
def extract(resolved: ResolvedSettings) -> None:
    """Encode a dataset with a frozen encoder into the cache (both flips), resumably.

    Run it again after an interruption: finished shards are kept, the rest is done. Several
    processes split the work: `torchrun --nproc_per_node 8 -m repackctl extract ...`.

    Example: `repackctl extract --encoder dinov3 --data imagenet --weights dinov3_vitb16.pth`
    """
    from repackctl.extract import run_extract

    s = resolved.settings
    main = is_main_process()
    result = run_extract(s, rank_progress(main), config_record=resolved.to_dict())
    if not main:
        return
    warn_listed(result.skipped, "skipped")
    warn_listed(result.warnings, "warnings", label=False)
    rows = [
        ("cache", s.cache),
        ("entry", result.entry),
        ("features", result.features),
        ("precision", result.precision),
        ("tokens", f"{result.tokens_shape} float16 (N, flips, T, C)"),
        ("written now", result.written),
        ("already done", result.already_done),
        ("skipped inputs", len(result.skipped)),
        ("time", f"{result.seconds:.1f} s ({result.images_per_s:.1f} img/s)"),
    ]
    console.print(kv_table("extract", rows))


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
