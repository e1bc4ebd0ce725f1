"""What every command shares: error rendering, settings resolution, --show-config, progress bars.

Only typer, rich and pydantic are imported here, so ``repackctl --help`` stays fast and does not
import torch; command modules import the library inside their functions.
"""

from __future__ import annotations

import errno
import faulthandler
import functools
import os
import re
import signal
import sys
import threading
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

from repackctl.errors import ConfigError, OutOfMemory, RepackError, debug_requested
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


def clip_words(text: str, limit: int = 160) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with ``…`` where it was
    cut: a backend's message quoted in an ``Error:`` line (``[:limit]`` cut it mid-word)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit // 2:  # a long word (a path) is cut where it is, not dropped whole
        head = head[:space]
    return head.rstrip(" .,;:") + "…"


def peer_lost_error(e: BaseException) -> RepackError:
    """The ``Error:``/``Hint:`` of a process whose peer went away (:func:`peer_lost`)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RepackError(
        f"another process of this job stopped, so this one cannot go on ({clip_words(first)})",
        "run the same command again, every process: it resumes from what was completely "
        "written (the log of the process that stopped says why)",
    )


#: torch's messages for a DataLoader worker that ended without reporting an exception: killed
#: by a signal (``is killed by signal: Killed.``: the kernel's OOM killer sends SIGKILL) or
#: gone with an exit code (``exited unexpectedly with exit code 1``, ``pid(s) 1, 2``)
_WORKER_LOST = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? ([0-9, ]+)\) (?:is killed by signal: ([^.]+)"
    r"|exited unexpectedly(?: with exit code (-?[0-9]+))?)"
)


def _worker_lost(e: BaseException) -> re.Match[str] | None:
    """torch's message of a lost worker in ``e`` or its causes, one that names the signal
    first: the loader's thread raises ``exited unexpectedly`` from the SIGCHLD handler's
    ``is killed by signal: Killed``, or alone when it found the worker gone by itself."""
    found = []
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        match = _WORKER_LOST.search(str(e))
        if match is not None:
            found.append(match)
        e = e.__cause__ or e.__context__
    return next((m for m in found if m.group(2)), found[0] if found else None)


def worker_lost_error(e: BaseException) -> RepackError | None:
    """The ``Error:``/``Hint:`` of a decode worker (a DataLoader worker process of ``extract``)
    that was killed, most often by the out-of-memory killer, where torch raised a bare
    ``RuntimeError`` and a traceback that said neither why nor what to do; None when ``e`` is
    not that. What the command wrote before stays valid, as after any kill."""
    found = _worker_lost(e)
    if found is None:
        return None
    pids, killed_by, code = found.groups()
    oom = "by the kernel's out-of-memory killer (memory ran out)"
    if killed_by:
        what = f"was killed (pid {pids.strip()}, signal: {killed_by})"
        cause = f", most likely {oom}" if killed_by == "Killed" else ""  # its signal: SIGKILL
    else:  # torch did not see how it ended: a kill (of the OOM killer) most often
        what = f"ended unexpectedly (pid {pids.strip()}{f', exit code {code}' if code else ''})"
        cause = "" if code else f", most likely killed {oom}"
    more = ""
    if killed_by == "Bus error":  # torch: workers out of shared memory
        cause, more = (
            ", most likely out of shared memory (/dev/shm)",
            ", or give /dev/shm more space",
        )
    return RepackError(
        f"a worker process that decodes images {what}{cause}",
        "run the same command again: it resumes from what was completely written; if it "
        "happens again, use fewer decode workers (--num-workers 0 decodes in the main "
        f"process) or a smaller --batch-size{more}",
    )


#: what an allocation failure says: torch's CPU allocator (``DefaultCPUAllocator: can't
#: allocate memory`` on Linux, ``not enough memory`` on Windows), CUDA's and MPS's ``out of
#: memory``, and numpy's ``Unable to allocate 22.9 GiB for an array`` (as a DataLoader worker's
#: error comes back: a ``RuntimeError`` quoting it); nothing broader
_OUT_OF_MEMORY = re.compile(
    r"can't allocate memory|not enough memory|out of memory|Unable to allocate \S+ \S+ for an "
    r"array"
)
#: the size an allocation asked for: torch's bytes, numpy's and CUDA's ``22.9 GiB``
_ASKED = re.compile(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGTPE]?i?B)", re.IGNORECASE)
#: the settings whose size decides what a command allocates (field names of the settings)
_SIZES = re.compile(r"(batch_size|^ch|channels|_blocks|resolution|grid_images)$")


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: a ``MemoryError`` (numpy's ``_ArrayMemoryError``
    is one), ``torch.OutOfMemoryError``, or a ``RuntimeError`` that says memory ran out."""
    if isinstance(e, MemoryError) or "OutOfMemoryError" in {c.__name__ for c in type(e).__mro__}:
        return True
    return isinstance(e, RuntimeError) and _OUT_OF_MEMORY.search(str(e)) is not None


def _asked(text: str) -> str:
    """``524 TiB``: the size the failed allocation asked for, as its message says; ``""``."""
    found = _ASKED.search(text)
    if found is None:
        return ""
    if found.group(2):
        return found.group(2)
    size, units = float(found.group(1)), ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.0f} {units[unit]}" if unit else f"{int(size)} bytes"


def _sizes_given() -> list[str]:
    """``--batch-size 1000000``: the size options given on this command line (flags only:
    a value from the environment or a config file is not one), from Click's context."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return []
    given = []
    for param in ctx.command.params:
        name, value = param.name or "", ctx.params.get(param.name or "")
        field = name[2:] if name.startswith(("o_", "c_")) else name
        source = ctx.get_parameter_source(name)
        if value is None or source != ParameterSource.COMMANDLINE or not _SIZES.search(field):
            continue
        given.append(f"{param.opts[0]} {value}")
    return given


def memory_error(e: BaseException) -> OutOfMemory:
    """The ``Error:`` of an allocation that failed (:func:`out_of_memory`): which memory ran
    out, what it asked for, and a ``Hint:`` naming the sizes given to lower, where torch or
    numpy printed a traceback (``can't allocate memory: you tried to allocate
    576000000000000 bytes``) for a size the settings accept (``--ch 1000000``)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    gpu = re.search(r"CUDA|GPU|MPS|HIP", text) is not None
    where = "GPU memory" if gpu else "memory"
    asked = _asked(text)
    what = f"ran out of {where}" + (f": it asked for {asked} at once" if asked else "")
    given = _sizes_given()
    lower = (
        f"lower the sizes given ({', '.join(given)})"
        if given
        else "lower the batch size (--batch-size) or the model's widths (--ch, "
        "--base-channels, --disc-channels …), given by flag, REPACKCTL_* or --config"
    )
    more = "use a GPU with more memory" if gpu else "free memory"
    return OutOfMemory(
        f"{what} ({clip_words(first)})",
        f"{lower}, or {more}; what was completely written before stays valid",
    )


def runtime_error(e: RuntimeError) -> RepackError | None:
    """The ``Error:`` a ``RuntimeError`` of torch stands for (a killed decode worker, a lost
    process of the job, memory that ran out), or None: any other keeps its traceback (a bug to
    report)."""
    worker = worker_lost_error(e)
    if worker is not None:
        return worker
    if out_of_memory(e):
        return memory_error(e)
    return peer_lost_error(e) if peer_lost(e) else None


def handle_errors(fn: Callable) -> Callable:
    """Turn RepackError into a one-line message (traceback only with REPACKCTL_DEBUG=1), and
    so the machine's errors a user can act on: a full disk, memory that ran out."""

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
            told = None if debug_requested() else runtime_error(e)
            if told is None:
                raise
            fail(told, e)
        except MemoryError as e:  # numpy's _ArrayMemoryError too
            if debug_requested():
                raise
            fail(memory_error(e), e)
        except KeyboardInterrupt as e:
            drop_frames(e)
            err_console.print(
                "[bold red]Error:[/] interrupted\n[bold]Hint:[/] run the same command again to "
                "resume; completed work is kept",
                markup=True,
            )
            raise typer.Exit(130) from None

    return wrapper


# ---- SIGTERM: one Error line, then the end a kill -9 would be --------------------------------
#: exit status of a process stopped by SIGTERM: 128 + 15, as a shell reports a signal's end
SIGTERM_EXIT = 128 + signal.SIGTERM
_stopping = threading.Lock()  # the handler or the watcher thread, whichever comes first
_wakeup: tuple[int, int] | None = None  # (read, write) ends of the SIGTERM watcher's pipe


def sigterm_lines(world: int, rank: int) -> tuple[str, str]:
    """The ``Error:`` and ``Hint:`` of a process stopped by SIGTERM; under torchrun
    (``world`` > 1) it is mostly the launcher ending the job because another process ended."""
    if world > 1:
        return (
            f"process {rank} of this job's {world} was stopped by SIGTERM: torchrun sends it to "
            "every process when another one of the job ended (whose log says why); a user or a "
            "job scheduler may send it too",
            "run the same command again, every process: it resumes from what was completely "
            "written",
        )
    return (
        "stopped by SIGTERM (sent by a user, a job scheduler or the system)",
        "run the same command again to resume: it goes on from what was completely written",
    )


def _stop_on_sigterm() -> None:
    """Print the SIGTERM lines on stderr and end the process at once (``os._exit``): no
    ``finally`` and no exit handler runs, so nothing more is written and the files are as a
    kill -9 leaves them, which every command resumes from. The first caller ends the process;
    a second (the handler after the watcher, or the other way round) returns."""
    if not _stopping.acquire(blocking=False):
        return
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        message, hint = sigterm_lines(world, int(os.environ.get("RANK", "0") or 0))
        start = "\n" if os.isatty(2) else ""  # after a progress bar's unfinished line
        os.write(2, f"{start}Error: {message}\nHint: {hint}\n".encode())
        if debug_requested():  # where each thread was
            faulthandler.dump_traceback(file=2, all_threads=True)
    except BaseException:  # noqa: BLE001 - stderr closed or full: end all the same
        pass
    os._exit(SIGTERM_EXIT)


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_on_sigterm()


def _watch_sigterm(fd: int) -> None:
    """Read the signal numbers Python's C handler writes to the wakeup pipe (``signal.
    set_wakeup_fd``) and stop on SIGTERM: the Python handler runs only when the main thread
    next runs Python code, which a long collective or kernel can hold off for minutes (then
    the launcher's SIGKILL ends it without a word)."""
    while True:
        try:
            got = os.read(fd, 64)
        except OSError:
            return
        if not got:
            return
        if int(signal.SIGTERM) in got:
            _stop_on_sigterm()


def _reset_in_child() -> None:
    """A forked child (a DataLoader worker, a fork-started process) ends on SIGTERM as before:
    the default action, no wakeup pipe shared with the parent (torch's workers then install
    their own handler)."""
    global _wakeup
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in _wakeup:
                os.close(fd)
    except (ValueError, OSError):  # not the main thread of the child: nothing to undo there
        pass
    _wakeup = None


def stop_on_sigterm() -> None:
    """End the CLI on SIGTERM with an ``Error:`` and the rerun, exit code 143: under torchrun
    the launcher SIGTERMs the other processes when one ends, and they died without a word.

    Only where that is safe: in the main thread, with SIGTERM at its default action (left
    alone if the caller ignores or handles it). The handler writes no file and ends the process
    at once (:func:`_stop_on_sigterm`), so what is on disk is what a kill -9 leaves."""
    global _wakeup
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    before = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    if before != -1:  # someone else's (never in the CLI): kept, the handler alone then
        signal.set_wakeup_fd(before)
        os.close(read)
        os.close(write)
    else:
        _wakeup = (read, write)
        threading.Thread(target=_watch_sigterm, args=(read,), daemon=True).start()
    os.register_at_fork(after_in_child=_reset_in_child)
    signal.signal(signal.SIGTERM, _on_sigterm)


def check_samples_root(value: str | None, count_hint: str | None = None) -> None:
    """Refuse ``--samples N`` (a plain positive number, no folder N here) where ``--samples``
    is the samples root (`sample`, `runs info`): ``evaluate fid --samples N`` is a count, and
    `sample -r RUN --samples 100` wrote its default count into a new folder ``./100``.
    ``count_hint``: how this command takes a count, named in the hint."""
    if value is None or not re.fullmatch(r"[0-9]+", value) or int(value) <= 0:
        return
    if Path(value).is_dir():  # an existing folder named so: meant
        return
    count = f"the number of samples is {count_hint}; " if count_hint else ""
    raise ConfigError(
        f"--samples {value} names the folder that holds sample sets here (the samples root), "
        f"and there is no folder {value}: only `repackctl evaluate fid` reads --samples as a "
        "number of samples",
        f"{count}for a folder named {value}, give --samples ./{value}",
    )


def resolve(
    config: str | None, given: dict[str, Any], flags: dict[str, str] | None = None
) -> ResolvedSettings:
    """Resolve the settings layers; ``given`` holds dotted keys of the flags (None: not given),
    ``flags`` the flags a command renames (dotted key → flag), named when a value is refused."""
    from repackctl.settings import resolve_settings, same_config_file

    given = {k: v for k, v in given.items() if v is not None}
    from_env = os.environ.get("REPACKCTL_CONFIG")
    if config and from_env and not same_config_file(config, from_env):
        # the flag wins, as for every setting; the file the environment names is not read
        line = f"--config {config} is read, not REPACKCTL_CONFIG={from_env} (a flag wins)"
        if is_main_process():
            err_console.print(note_line(line), highlight=False, soft_wrap=True, markup=False)
    config = config or from_env
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
