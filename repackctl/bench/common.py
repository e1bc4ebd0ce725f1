"""Timing, environment capture and the result format shared by every benchmark.

Method (the usual one for GPU kernels, e.g. ``torch.utils.benchmark`` / triton ``do_bench``):
``warmup`` untimed calls (compilation, allocator and cache warm-up), then ``repeats`` timed calls,
each synchronised with the device; the **median** is reported. Within one result every figure is
also given as a ratio to a baseline of its group measured in the same run, because absolute times
on shared machines move by 2-3× between runs (``reference/environment.md``) while ratios do not.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from repackctl.errors import ConfigError
from repackctl.progress import ProgressFactory, null_progress
from repackctl.runtime import cpu_name

SIZES = ("tiny", "small", "paper")


@dataclass
class BenchContext:
    """What every sub-benchmark receives: size, timing policy, device, scratch space."""

    size: str = "tiny"
    warmup: int = 1
    repeats: int = 5
    compile: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workdir: Path | None = None  # scratch folder (a temporary one when None); made if missing
    encoder: str | None = None
    encoder_weights: str | None = None
    model: str | None = None  # the train benchmark's model id; None = the size's DiT
    progress: ProgressFactory = null_progress
    min_sample_s: float = 0.05  # shorter calls are looped within one timed sample

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"unknown size {self.size!r}", hint=f"use {', '.join(SIZES)}")
        # the CLI's settings check these too; scripts and library callers build a context here
        if self.warmup < 0:
            raise ConfigError(f"--warmup {self.warmup} is negative", "give 0 or more")
        if self.repeats < 1:
            raise ConfigError(f"--repeats {self.repeats}: nothing would be timed", "give 1 or more")
        if self.workdir is not None:
            self.workdir = scratch_folder(self.workdir)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass
class Row:
    """One measured case. ``ratio`` = throughput relative to the group's baseline (>1 faster)."""

    group: str
    case: str
    median_s: float | None  # per call; None when the case was skipped
    per_s: float | None = None  # items per second (``unit`` per second)
    unit: str = "call"
    ratio: float | None = None
    baseline: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """A whole sub-benchmark: rows, parameters, environment."""

    name: str
    size: str
    rows: list[Row]
    params: dict[str, Any]
    env: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    started_at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    fn: Callable[[], Any],
    ctx: BenchContext,
    *,
    warmup: int | None = None,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Median per-call wall time of ``fn()`` (device-synchronised) after warm-up calls.

    Like ``timeit``, short calls are looped: each timed sample runs ``fn`` enough times to last
    about ``ctx.min_sample_s``, so a sample is not dominated by timer resolution or one scheduler
    preemption; the per-call time of a sample is its duration divided by the loop count.
    """
    warmup = ctx.warmup if warmup is None else warmup
    repeats = ctx.repeats if repeats is None else repeats
    for _ in range(warmup):
        fn()
    ctx.sync()
    # calibrate on the fastest of a few calls: one call stalled by a busy machine must not make
    # every later sample a single (equally stallable) call
    fastest, spent = math.inf, 0.0
    while spent < ctx.min_sample_s:
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        took = time.perf_counter() - t0
        fastest, spent = min(fastest, took), spent + took
        if took >= ctx.min_sample_s:
            break
    fastest = max(fastest, 1e-9)
    inner = 1 if fastest >= ctx.min_sample_s else min(1000, math.ceil(ctx.min_sample_s / fastest))
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ctx.sync()
        times.append((time.perf_counter() - t0) / inner)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "loops": inner}  # fmt: skip


def timed_row(
    group: str,
    case: str,
    fn: Callable[[], Any],
    ctx: BenchContext,
    *,
    items: float = 1.0,
    unit: str = "call",
    baseline: bool = False,
    warmup: int | None = None,
    repeats: int | None = None,
    note: str = "",
) -> Row:
    """Measure ``fn`` and make a row; ``items`` units are processed per call."""
    m = measure(fn, ctx, warmup=warmup, repeats=repeats)
    return Row(
        group,
        case,
        m["median_s"],
        per_s=items / m["median_s"] if m["median_s"] > 0 else None,
        unit=unit,
        baseline=baseline,
        note=note,
        extra={"min_s": m["min_s"], "repeats": len(m["times_s"]), "loops": m["loops"]},
    )


def skipped(group: str, case: str, why: str) -> Row:
    return Row(group, case, None, note=f"skipped: {why}")


def fill_ratios(rows: list[Row]) -> list[Row]:
    """Per group: ratio = baseline median time / case median time (throughput ratio)."""
    base = {r.group: r for r in rows if r.baseline and r.median_s}
    for r in rows:
        b = base.get(r.group)
        if b is not None and r.median_s:
            r.ratio = b.median_s / r.median_s
    return rows


def env_info(device: torch.device) -> dict[str, Any]:
    """Everything that changes the figures: versions, device, CPU/GPU, threads, git revision."""
    from repackctl import __version__
    from repackctl.metrics.protocol import git_revision

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repackctl": __version__,
        "git_revision": git_revision(),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def default_out(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("benchmarks") / "results" / f"{name}-{stamp}.json"


def scratch_folder(workdir: str | Path) -> Path:
    """``--workdir``, checked and created (with its parents) before anything runs: a file, a
    path under a file or a read-only folder is a ``ConfigError`` naming it."""
    from repackctl.files import ensure_writable_dir

    path = ensure_writable_dir(workdir, "benchmark scratch folder (--workdir)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"the benchmark scratch folder (--workdir) {path} cannot be created: {e.strerror}",
            "point --workdir at a folder you can write to",
        ) from e
    return path


#: the keys of every single-benchmark result file (``BenchResult.to_dict``)
RESULT_KEYS = frozenset({"name", "size", "rows", "params", "env"})
_MAX_RESULT_BYTES = 64 << 20  # a result file is kilobytes; a bigger file is someone else's


def _is_result_of(path: Path, name: str) -> bool:
    """True when ``path`` is a result file this tool wrote for benchmark ``name`` (``all``: the
    list of every benchmark), i.e. one that running ``name`` again may replace."""
    try:
        if path.stat().st_size > _MAX_RESULT_BYTES:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return False
    if not isinstance(doc, dict) or doc.get("name") != name:
        return False
    return isinstance(doc.get("results"), list) if name == "all" else RESULT_KEYS <= doc.keys()


def check_out(name: str, out: str | Path | None) -> Path | None:
    """Check ``--out`` of benchmark ``name`` (``all`` for the list) before anything runs; returns
    it as a path (None: the default, a new timestamped file).

    A folder is refused (pass a file name); an existing file is replaced only when it is a result
    this tool wrote for the same benchmark, anything else (notes, another benchmark's result, a
    file that is not JSON) is refused, untouched; a folder it cannot be written in is refused.
    """
    if not out:
        return None
    from repackctl.files import ensure_writable_dir, refuse_foreign_output

    path = Path(out).expanduser()
    refuse_foreign_output(
        path,
        lambda p: _is_result_of(p, name),
        "the benchmark output (--out)",
        f"a `benchmark {name}` result",
        "pass a new file name to --out, or move that file away first",
        folder_hint=f"pass a file name, e.g. --out {path / f'{name}.json'}",
    )
    ensure_writable_dir(path.parent, "folder of the benchmark output (--out)")
    return path


def write_result(result: BenchResult | list[BenchResult], out: str | Path | None) -> Path:
    """Write one result (or the list of ``all``) as JSON, atomically; returns the path. ``out``
    is checked again (``check_out``): a file that is not this benchmark's result is never
    replaced."""
    from repackctl.metrics.frechet import atomic_path

    name = result.name if isinstance(result, BenchResult) else "all"
    path = check_out(name, out) or default_out(name)
    doc = result.to_dict() if isinstance(result, BenchResult) else {
        "name": "all", "results": [r.to_dict() for r in result]
    }  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def scratch_space(workdir: str | Path | None, name: str) -> Iterator[Path]:
    """A scratch folder ``repackctl-bench-<name>-<pid>-<host>-<random>`` under ``workdir``
    (none: the system's temporary folder), removed at the end. The folders of this benchmark
    that a killed run of this machine left there (named so, their pid gone) are removed first: a
    kill skips the cleanup, and at --size paper each holds gigabytes. A folder of another
    machine (a workdir on a shared filesystem) is never judged by its pid, which means nothing
    here; older names without the machine count as this machine's. Nothing else in ``workdir``
    is touched."""
    from repackctl.files import remove_stale_writer_dirs
    from repackctl.temp_names import writer_tag

    base = Path(workdir) if workdir else Path(tempfile.gettempdir())
    prefix = f"repackctl-bench-{name}-"
    remove_stale_writer_dirs(base, prefix)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{writer_tag()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
