"""Settings of `repackctl benchmark` (nested as `[benchmark]` / `REPACKCTL_BENCHMARK__*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: the most torch CPU threads a benchmark takes (100000 exhausted the process's threads: a
#: traceback, then a segfault); more than any node's cores only oversubscribe them. A fixed
#: bound, not this machine's CPU count, so a config file valid on one machine is on another
MAX_THREADS = 1024


class BenchmarkSettings(BaseModel):
    """`repackctl benchmark` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    size: Literal["tiny", "small", "paper"] = Field(
        "small", description="problem size: tiny (seconds, CPU), small, paper (GPU node)"
    )
    warmup: int = Field(1, ge=0, description="untimed runs before measuring")
    repeats: int = Field(5, ge=1, description="timed runs; the median is reported")
    min_time: float = Field(
        0.05,
        ge=0,
        le=60,
        description="seconds per timed sample, at most 60: shorter calls are looped (0 = no "
        "loop; a longer sample only makes the run longer, 1e30 looped for ever)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description=f"torch CPU threads, at most {MAX_THREADS}; none = torch's default "
        "(recorded in the JSON)",
    )
    compile: bool = Field(True, description="also measure torch.compile versions (kernels)")
    out: str | None = Field(
        None,
        min_length=1,
        description="JSON result file; none = benchmarks/results/<name>-<timestamp>.json",
    )
    encoder: str | None = Field(
        None,
        min_length=1,
        description="encoder for the extract benchmark; none = the size's default",
    )
    encoder_weights: str | None = Field(
        None,
        min_length=1,
        description="its weights (file or 'random'); none = 'random' (speed only)",
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="model of the train benchmark (a registered id); a text-conditioned one "
        "(mmdit-tiny, mmdit-s-2 …) times the train t2i step on cached-style text features; "
        "none = the size's DiT",
    )
    workdir: str | None = Field(
        None,
        min_length=1,
        description="scratch folder for benchmark data; none = a temporary folder",
    )
