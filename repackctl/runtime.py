"""Where and how a process runs: rank / world size, device, distributed info."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.errors import ConfigError


@dataclass
class DistInfo:
    """Rank and world size from torchrun / accelerate environment variables."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                dist.init_process_group(backend)
            dist.barrier()

    def all_sum(self, value: int) -> int:
        (total,) = self.all_sums(value)
        return total

    def all_sums(self, *values: int) -> tuple[int, ...]:
        """Each value summed over the processes, on every process: what a command reports for
        the whole job (every process wrote its own share), not for rank 0's share alone."""
        return tuple(int(v) for v in self._all_reduce(values, torch.int64, "sum"))

    def all_max(self, value: float) -> float:
        """The largest value of any process, on every process (e.g. the job's time: the
        slowest process's)."""
        return float(self._all_reduce((value,), torch.float64, "max")[0])

    def job_totals(self, written: int, already: int, seconds: float) -> tuple[int, int, float]:
        """A command's summary for the whole job, on every process: the counts written now and
        already done summed over the processes (each wrote its own share), and the slowest
        process's seconds."""
        written, already = self.all_sums(written, already)
        return written, already, self.all_max(seconds)

    def all_items(self, items: list[Any]) -> list[Any]:
        """Every process's ``items`` (JSON values; tuples come back as lists), in rank order, on
        every process: e.g. the decode warnings each process met, for the one summary rank 0
        prints. Each process's JSON bytes (+ 1, so 0 pads) fill its own row of a zero matrix,
        and a sum over the processes gives every row."""
        if self.world == 1:
            return list(items)
        data = np.frombuffer(json.dumps(items).encode(), np.uint8).astype(np.int64) + 1
        (size,) = self._all_reduce((len(data),), torch.int64, "max")
        rows = np.zeros((self.world, int(size)), np.int64)
        rows[self.rank, : len(data)] = data
        summed = np.asarray(self._all_reduce(rows, torch.int64, "sum")).reshape(rows.shape)
        parts = [bytes((row[row > 0] - 1).astype(np.uint8)) for row in summed]
        return [item for part in parts for item in json.loads(part)]

    def _all_reduce(self, values: tuple | np.ndarray, dtype: torch.dtype, op: str) -> list:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        self.barrier()  # starts the process group when nothing has yet
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        t = torch.as_tensor(values, dtype=dtype).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        # the backend's thread may hold ``t`` a moment longer: a process that returns and exits
        # at once would have it freed there during interpreter shutdown, taking the GIL of a
        # dying interpreter (the process aborts: "terminate called without an active exception")
        deadline = time.monotonic() + 2.0
        while t._use_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.0005)
        return t.tolist()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the local rank's GPU when there is one, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N") from None
    _check_available(dev)
    return dev


def _check_available(dev: torch.device) -> None:
    """A device that this machine does not have is a clean error, not a later RuntimeError."""
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {str(dev)!r} asked for, but no CUDA GPU is available here",
                "use --device cpu (or auto), or check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
            )
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {str(dev)!r} asked for, but only {count} CUDA GPU(s) are visible",
                f"use cuda:0 .. cuda:{count - 1}, or --device auto",
            )
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(
            "device 'mps' asked for, but Apple's MPS backend is not available here",
            "use --device cpu (or auto)",
        )


# accelerate's names of the launcher's precision (`accelerate launch --mixed_precision bf16`)
_LAUNCHER_PRECISION = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


def resolve_precision(
    settings_value: str, source: str, environ: dict[str, str] | None = None
) -> tuple[str, str]:
    """The training precision and where it came from: flag > config/env > launcher > default.

    ``source`` is the settings layer of ``settings_value`` ("flag", "env", "file …" or "default").
    A value set through repackctl (flag, its config file or ``REPACKCTL_PRECISION``) wins over
    ``ACCELERATE_MIXED_PRECISION`` (set by ``accelerate launch --mixed_precision``), which wins
    over repackctl's default.
    """
    env = os.environ if environ is None else environ
    launcher = env.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if source.endswith("(launcher)"):  # kept on resume: the launcher chose it when the run started
        _check_same_launcher(settings_value, launcher)
    if source != "default":
        return settings_value, source
    if launcher in _LAUNCHER_PRECISION:
        return _LAUNCHER_PRECISION[launcher], "launcher"
    return settings_value, "default"


def _check_same_launcher(kept: str, launcher: str) -> None:
    """A run whose precision the launcher chose, resumed under a launcher that asks for another
    one: it went on in the kept precision without a word. Refused (no launcher setting: kept)."""
    # accelerate sets "no" when --mixed_precision is not given at all: not a request for fp32
    asked = None if launcher == "no" else _LAUNCHER_PRECISION.get(launcher)
    if asked is None or asked == kept:
        return
    raise ConfigError(
        f"this run trained in {kept}, chosen by `accelerate launch --mixed_precision` when it "
        f"started; this launch asks for {asked} (--mixed_precision {launcher})",
        f"resume it with `--mixed_precision {kept}` (or without the flag), or pass --precision "
        f"{asked} --allow-change precision to go on in {asked}",
    )


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on any device (none for fp32), checked by ``check_precision``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


def check_precision(precision: str, device: torch.device, what: str = "the features") -> None:
    """A precision this torch cannot autocast to on ``device`` is refused before anything is
    written: ``what`` would be computed in fp32 while ``precision`` is recorded."""
    if precision == "fp32" or _autocasts(precision, device):
        return
    others = " or ".join(p for p in ("bf16", "fp16") if p != precision and _autocasts(p, device))
    raise ConfigError(
        f"--precision {precision} is not supported on {device.type} by torch "
        f"{torch.__version__} ({what} would be computed in fp32)",
        f"use --precision {others + ' or ' if others else ''}fp32, or another --device",
    )


def _autocasts(precision: str, device: torch.device) -> bool:
    """Whether torch really autocasts to ``precision`` on ``device`` (it may warn and not)."""
    if not torch.amp.is_autocast_available(device.type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns, then runs with autocast off
        with torch.autocast(device.type, dtype=AMP_DTYPES[precision]):
            return torch.is_autocast_enabled(device.type)


def is_main_process() -> bool:
    """Rank 0 of a launcher (torchrun / accelerate), or a plain single process."""
    return int(os.environ.get("RANK", 0)) == 0


def header_line(header: dict[str, Any]) -> str:
    """``world 2 · cpu · bf16 (launcher) · seed 0 · repackctl 0.1.0``"""
    return (
        f"world {header['world_size']} · {header['device']} · {header['precision']} "
        f"({header['precision_source']}) · seed {header['seed']} · repackctl {header['repackctl']}"
    )


def run_header(
    dist: DistInfo, device: torch.device, precision: str, source: str, seed: int
) -> dict:
    """The one-line header every long command prints (and stores): who runs where, how."""
    from repackctl import __version__

    return {
        "world_size": dist.world,
        "device": str(device),
        "precision": precision,
        "precision_source": source,
        "seed": seed,
        "repackctl": __version__,
        "torch": torch.__version__,
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 256, repeats: int = 20) -> float:
    """A speed index of this CPU: GFLOP/s of an ``n``×``n`` float32 matmul on one torch thread
    (the best of ``repeats``), so that run times from two machines can be compared."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / max(best, 1e-9) / 1e9
