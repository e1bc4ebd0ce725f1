"""What every command shares: error rendering, settings resolution, --show-config, progress bars.

Only typer, rich and pydantic are imported here, so ``repackctl --help`` stays fast and does not
import torch; command modules import the library inside their functions.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from repackctl.errors import RepackError, debug_requested
from repackctl.progress import (
    ProgressBar,
    ProgressFactory,
    format_fields,
    format_rate,
    log_progress,
    set_log_every_s,
)

if TYPE_CHECKING:
    from repackctl.settings import ResolvedSettings

# Text is printed as it is: a path or a file name with square brackets (`photo [edited].png`,
# `runs/[/b]x`) is no Rich markup, which dropped it or stopped the command with a traceback.
# Our own styles are asked for where they are printed (``markup=True``, the rest escaped).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

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
# (flag, help) of the top-level settings shared by the commands; the generated options of
# ``cli.options.settings_command`` and the hand-declared ones below both read them here
COMMON: dict[str, tuple[str, str]] = {
    "cache": ("--cache", "Cache root: a folder or an fsspec URL. Env: REPACKCTL_CACHE."),
    "runs": ("--runs", "Folder holding training runs. Env: REPACKCTL_RUNS."),
    "samples": ("--samples", "Folder holding sample sets. Env: REPACKCTL_SAMPLES."),
    "seed": ("--seed", "Global seed."),
    "device": ("--device", "auto, cpu, cuda or cuda:N (auto picks the GPU)."),
    "precision": ("--precision", "fp32, bf16 or fp16 (flag > config/env > launcher > fp32)."),
    "num_workers": ("--num-workers", "DataLoader workers that decode images."),
    "memory_gb": (
        "--memory-gb",
        "Size limit (GiB) of the automatic in-memory load of cached training data.",
    ),
}


def _common(key: str) -> Any:
    flag, text = COMMON[key]
    return typer.Option(flag, help=text)


CacheOpt = Annotated[str | None, _common("cache")]
RunsOpt = Annotated[str | None, _common("runs")]
SamplesOpt = Annotated[str | None, _common("samples")]
SeedOpt = Annotated[int | None, _common("seed")]
DeviceOpt = Annotated[str | None, _common("device")]
PrecisionOpt = Annotated[str | None, _common("precision")]
WorkersOpt = Annotated[int | None, _common("num_workers")]


def fail(err: RepackError, caught: BaseException | None = None) -> None:
    """Print ``Error:``/``Hint:`` to stderr and exit with the error's code. ``caught``: the
    exception ``err`` reports when it is not ``err`` itself (an ``OSError`` told as a disk
    error), whose frames are dropped (``drop_frames``)."""
    err_console.print(
        f"[bold red]Error:[/] {escape(err.message)}", markup=True, highlight=False, soft_wrap=True
    )
    if err.hint:
        err_console.print(
            f"[bold]Hint:[/] {escape(err.hint)}", markup=True, highlight=False, soft_wrap=True
        )
    drop_frames(err if caught is None else caught)
    raise typer.Exit(err.exit_code)


def drop_frames(err: BaseException) -> None:
    """Forget the frames of the failed command that ``err`` and its causes still reference:
    the handler that reports it keeps it in a cycle (frame → ``err`` → traceback → frame)
    that only the garbage collector frees, and those frames hold what the command had open
    (an entry's reader locks, ``cache.integrity.GuardedArray``). Without them it is freed
    now: in one process (the library, the tests' runner), a `cache verify --repair` right
    after a refused `pack encode` found the entry still "being read"."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        err = err.__cause__ or err.__context__


# errors of the machine, not of the code: a full disk, a read-only or forbidden path
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error(e: OSError) -> RepackError:
    """An ``Error:`` naming the path and the cause; what was written before stays valid."""
    where = f" writing {e.filename}" if e.filename else ""
    return RepackError(
        f"{e.strerror or e}{where}",
        "free space or fix the permissions, then run the same command again: it resumes from "
        "what was completely written",
    )


def name_error(e: OSError) -> RepackError:
    """An ``Error:`` for a file name longer than the file system takes (a long ``--name`` or
    ``--out``, or a samples folder named after several long run names); nothing was written
    under it."""
    name = Path(str(e.filename or "")).name
    return RepackError(
        f"a file name is too long for the file system ({len(name.encode())} bytes, "
        f"{name[:48]}…): {e.strerror or e}",
        "shorten that name (a folder given with --cache, --out or --name, or the runs a "
        "samples folder is named after); nothing was written under it",
    )


#: what the collective backends raise when a process of the job is gone
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` says that another process of a multi-process job went away (killed, or
    failed on its own): a raw gloo/NCCL traceback on the survivor, which only needs a rerun."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"DistBackendError", "DistNetworkError"}) or any(
        s in str(e) for s in _PEER_LOST
    )


def handle_errors(fn: Callable) -> Callable:
    """Turn RepackError into a one-line message (traceback only with REPACKCTL_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RepackError as e:
            if debug_requested():
                raise
            fail(e)
        except OSError as e:
            if debug_requested() or e.errno not in (*_DISK_ERRORS, errno.ENAMETOOLONG):
                raise
            fail(name_error(e) if e.errno == errno.ENAMETOOLONG else disk_error(e), e)
        except RuntimeError as e:
            if debug_requested() or not peer_lost(e):
                raise
            fail(
                RepackError(
                    "another process of this job stopped, so this one cannot go on ("
                    f"{str(e).strip().splitlines()[0][:160]})",
                    "run the same command again, every process: it resumes from what was "
                    "completely written (the log of the process that stopped says why)",
                ),
                e,
            )
        except KeyboardInterrupt as e:
            drop_frames(e)
            err_console.print(
                "[bold red]Error:[/] interrupted\n[bold]Hint:[/] run the same command again to "
                "resume; completed work is kept",
                markup=True,
            )
            raise typer.Exit(130) from None

    return wrapper


def resolve(
    config: str | None, given: dict[str, Any], flags: dict[str, str] | None = None
) -> ResolvedSettings:
    """Resolve the settings layers; ``given`` holds dotted keys of the flags (None: not given),
    ``flags`` the flags a command renames (dotted key → flag), named when a value is refused."""
    from repackctl.settings import resolve_settings

    given = {k: v for k, v in given.items() if v is not None}
    config = config or os.environ.get("REPACKCTL_CONFIG")
    resolved = resolve_settings(config, given, flag_names=flags)
    set_log_every_s(resolved.settings.log_every_s)  # period of plain progress lines
    return resolved


def _run_dir_of(settings: Any, section: str) -> Path | None:
    """The run folder a training command of ``section`` would resume (None: none, e.g. a
    refine run without ``--name`` when there is no pack run to name it after)."""
    from repackctl.paths import run_dir

    if section == "dit":
        from repackctl.dit.task import dit_run_dir

        return dit_run_dir(settings)
    if section == "t2i":
        from repackctl.dit.t2i_task import t2i_run_dir

        return t2i_run_dir(settings)
    if section == "pack":
        from repackctl.pack.task import default_run_name

        return run_dir(settings.runs, settings.pack.run or default_run_name(settings))
    if section == "refine":
        from repackctl.refine.task import refine_run_dir

        try:  # named after its pack run, as `refine train` names it
            return refine_run_dir(settings)
        except RepackError:  # no pack run to name it after: `refine train` says so itself
            return None
    return None


def resumed_settings(resolved: Any, section: str) -> tuple[Any, Path | None]:
    """The settings a run that already exists would resume with (its stored values, what is
    given now on top, a breaking change refused as the command would), and that run's folder;
    ``resolved`` itself and None for a new run."""
    from repackctl.settings import ResolvedSettings
    from repackctl.settings.resume import check_run_stage, reconcile, stored_record

    run_dir = _run_dir_of(resolved.settings, section) if section in RESUMABLE else None
    if run_dir is not None:
        check_run_stage(run_dir, section)  # another stage's run: its settings are not these
    stored = stored_record(run_dir, section) if run_dir is not None else None
    if stored is None:
        return resolved, None
    allow = list(getattr(getattr(resolved.settings, section), "allow_change", None) or [])
    rec = reconcile(stored, resolved.to_dict(), section, allow)
    settings = type(resolved.settings).model_validate(rec.values)
    return ResolvedSettings(settings, rec.sources), run_dir


RESUMABLE = ("dit", "t2i", "pack", "refine")


def show_config(
    resolved: ResolvedSettings, sections: tuple[str, ...], resumable: bool = False
) -> None:
    """Print the resolved settings of the common keys and ``sections`` with their source; for a
    training command (``resumable``) whose run exists, the values its resume would use."""
    from repackctl.settings.checks import check_schedules

    run_dir = None
    if resumable:
        resolved, run_dir = resumed_settings(resolved, sections[0])
        check_schedules(resolved.settings, resolved.sources, sections[0])
    if run_dir is not None:
        console.print(
            f"# run {run_dir} exists: the values it resumes with", highlight=False, soft_wrap=True
        )
    rows = resolved.rows(sections)
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:  # plain lines: easy to grep and to paste into a TOML file
        console.print(f"{key:<{width}} = {value!r:<30} # {source}", highlight=False, soft_wrap=True)


class _RichBar:
    """A Rich task that stays hidden until it first advances (no leftover ``0/?`` bars)."""

    def __init__(self, progress: Progress, task: TaskID, unit: str, completed: int) -> None:
        self.progress = progress
        self.task = task
        self.unit = unit
        self.start = time.perf_counter()
        self.start_done = self.done = completed
        self.fields: dict[str, Any] = {}

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        rate = (self.done - self.start_done) / max(time.perf_counter() - self.start, 1e-9)
        info = format_rate(rate, self.unit)
        if self.fields:
            info += "  " + format_fields(self.fields)
        self.progress.update(self.task, advance=n, info=info, visible=True)

    def log(self, message: str) -> None:
        self.progress.console.print(message, highlight=False, soft_wrap=True)


def progress_columns(width: int, description: str, total: int | None) -> list[ProgressColumn]:
    """Columns that fit ``width``: the description is never cut; the bar, percentage and elapsed
    time go first as the terminal narrows; the fields (loss, rate) wrap instead of being cut."""
    desc = TextColumn(
        "{task.description}",  # a run or entry name as it is, never read as markup
        style="bold",
        markup=False,
        table_column=Column(no_wrap=True, min_width=len(description)),
    )
    count = MofNCompleteColumn() if total else TextColumn("{task.completed}")
    info = TextColumn(
        "{task.fields[info]}", markup=False, table_column=Column(overflow="fold", ratio=1)
    )
    eta = [TextColumn("ETA"), TimeRemainingColumn()] if total else []
    cols: list[ProgressColumn] = [desc]
    if width >= 100 and total:
        cols += [BarColumn(bar_width=max(10, min(40, width - 90))), count, TaskProgressColumn()]
    elif width >= 70 and total:
        cols += [BarColumn(bar_width=10), count, TaskProgressColumn()]
    else:
        cols.append(count)
    if width >= 120:
        cols.append(TimeElapsedColumn())
    return [*cols, *eta, info]


@contextmanager
def _rich_bar(description: str, total: int | None, completed: int, unit: str) -> Iterator[_RichBar]:
    progress = Progress(
        *progress_columns(err_console.width, description, total),
        console=err_console,
        transient=False,
        expand=True,
    )
    with progress:
        task = progress.add_task(
            description, total=total, completed=completed, info="", visible=False
        )
        yield _RichBar(progress, task, unit, completed)


def rich_progress(
    description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
) -> AbstractContextManager[ProgressBar]:
    """The CLI's ProgressFactory: a Rich bar (count, rate, ETA) when stderr is a terminal, else
    one plain line every ``REPACKCTL_LOG_EVERY_S`` seconds (SLURM, nohup, ``| tee``)."""
    if err_console.is_terminal:
        return _rich_bar(description, total, completed, unit)
    return log_progress()(description, total=total, completed=completed, unit=unit)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")  # paths and ids wrap, never cut
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def warn_listed(
    pairs: list[tuple[str, str]], what: str, label: bool = True, limit: int = 20
) -> None:
    """One ``Warning:`` line per ``(key, reason)`` (``skipped KEY: …`` with ``label``), at most
    ``limit`` of them, then how many more ``what`` were left out."""
    for key, reason in pairs[:limit]:
        head = f"skipped {key}" if label else key
        err_console.print(
            f"[yellow]Warning:[/] {escape(f'{head}: {reason}')}", markup=True, highlight=False
        )
    if len(pairs) > limit:
        err_console.print(
            f"[yellow]Warning:[/] … and {len(pairs) - limit} more {what}", markup=True
        )


def note_line(message: str) -> str:
    """``note: <message>``, or the message as it is when it is a ``Warning: …`` already: one
    prefix per line, the house's ``Warning:`` never demoted to a note."""
    return message if message.startswith("Warning:") else f"note: {message}"


def rank_progress(main: bool) -> ProgressFactory:
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


def confirm_delete(question: str, check: str) -> bool:
    """``typer.confirm`` for a deletion, refused with an ``Error:``/``Hint:`` when no answer can
    be read: with stdin closed or not a terminal (a script, CI, ``< /dev/null``) the prompt reads
    EOF and Click printed a bare "Aborted." that did not say whether anything was deleted or how
    to go on. ``check`` is the command that shows what would be deleted. Ctrl-C still aborts."""
    from repackctl.errors import ConfigError

    try:
        return typer.confirm(question, default=False)
    except typer.Abort as e:  # Typer's own (it vendors Click's prompts)
        if not isinstance(e.__context__, EOFError):
            raise
        typer.echo()  # end the prompt's line
        raise ConfigError(
            "no answer to the confirmation (stdin is not a terminal or is empty): nothing was "
            "deleted",
            f"check what would be deleted (`{check}`), then pass --yes to delete without asking",
        ) from None
