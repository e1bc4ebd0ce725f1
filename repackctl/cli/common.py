"""What every command shares: error rendering, settings resolution, --show-config, progress bars.

Only typer, rich and pydantic are imported here, so ``repackctl --help`` stays fast and does not
import torch; command modules import the library inside their functions.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from repackctl.errors import RepackError

console = Console()
err_console = Console(stderr=True)

# ---- options shared by every command (all default to None: only given flags override) ---------
ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="TOML file with settings (see README).")
]
ShowConfigOpt = Annotated[
    bool,
    typer.Option(
        "--show-config", help="Print every resolved setting and where it came from, then exit."
    ),
]
CacheOpt = Annotated[
    str | None,
    typer.Option("--cache", help="Cache root (path or fsspec URL). Env: REPACKCTL_CACHE."),
]
RunsOpt = Annotated[
    str | None, typer.Option("--runs", help="Folder holding training runs. Env: REPACKCTL_RUNS.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Global seed.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto picks the GPU).")
]
PrecisionOpt = Annotated[
    str | None, typer.Option("--precision", help="fp32, bf16 or fp16 (mixed precision on GPU).")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--num-workers", help="DataLoader workers that decode images.")
]


def debug() -> bool:
    return os.environ.get("REPACKCTL_DEBUG", "") not in {"", "0", "false"}


def fail(err: RepackError) -> None:
    """Print ``Error:``/``Hint:`` to stderr and exit with the error's code."""
    err_console.print(f"[bold red]Error:[/] {err.message}", highlight=False, soft_wrap=True)
    if err.hint:
        err_console.print(f"[bold]Hint:[/] {err.hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(err.exit_code)


def handle_errors(fn: Callable) -> Callable:
    """Turn RepackError into a one-line message (traceback only with REPACKCTL_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RepackError as e:
            if debug():
                raise
            fail(e)
        except KeyboardInterrupt:
            err_console.print(
                "[bold red]Error:[/] interrupted\n[bold]Hint:[/] run the same command again to "
                "resume; completed work is kept"
            )
            raise typer.Exit(130) from None

    return wrapper


def resolve(config: str | None, flags: dict[str, Any]):
    """Resolve settings from the layers; ``flags`` holds dotted keys of flags actually given."""
    from repackctl.settings import resolve_settings

    given = {k: v for k, v in flags.items() if v is not None}
    return resolve_settings(config or os.environ.get("REPACKCTL_CONFIG"), given)


def show_config(resolved, sections: tuple[str, ...]) -> None:
    """Print the resolved settings of the common keys and ``sections`` with their source."""
    rows = resolved.rows(sections)
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:  # plain lines: easy to grep and to paste into a TOML file
        console.print(f"{key:<{width}} = {value!r:<30} # {source}", highlight=False, soft_wrap=True)


class _RichBar:
    def __init__(self, progress: Progress, task: int, unit: str) -> None:
        self.progress = progress
        self.task = task
        self.unit = unit
        self.start = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        info = f"{rate:.1f} {self.unit}/s"
        for k, v in fields.items():
            info += f"  {k} {v:.4g}" if isinstance(v, float) else f"  {k} {v}"
        self.progress.update(self.task, advance=n, info=info)

    def log(self, message: str) -> None:
        self.progress.console.print(message, highlight=False)


@contextmanager
def rich_progress(
    description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
) -> Iterator[_RichBar]:
    """A Rich progress bar with count, rate and ETA (the CLI's ProgressFactory)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _RichBar(progress, task, unit)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def rank_progress(main: bool):
    """The Rich bar on the main process; nothing on the others (one bar per job, not per rank)."""
    if main:
        return rich_progress
    from repackctl.progress import null_progress

    return null_progress


def write_stdout(text: str) -> None:
    sys.stdout.write(text)


def is_main_process() -> bool:
    """Rank 0 (as ``repackctl.runtime.is_main_process``, without importing torch for --help)."""
    return int(os.environ.get("RANK", 0)) == 0
