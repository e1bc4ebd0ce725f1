"""Run metrics: ``metrics.jsonl``, TensorBoard scalars (``tb/``) and ``curves.png`` (DESIGN.md §6).

Only the main process writes. On resume, lines and events after the resumed step (written by the
interrupted process after its last checkpoint) are dropped, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
CURVES = "curves.png"
# keys of a metrics line that are not loss terms (not drawn on the loss panel)
NON_LOSS = {"step", "epoch", "steps/s", "samples/s", "bad_steps", "time"}


class MetricsLogger:
    """Appends one JSON line per log step and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy; only when training

            # purge_step drops events an interrupted process wrote after the checkpoint
            self._tb = SummaryWriter(
                str(self.run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain ``step``)."""
        clean = {k: (float(v) if not isinstance(v, int | str) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for k, v in clean.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (skipping a line cut by a kill)."""
    path = Path(run_dir) / METRICS
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def plot_curves(run_dir: str | os.PathLike) -> Path | None:
    """Draw loss terms (log scale when positive) and the lr against step into ``curves.png``."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k not in NON_LOSS and not k.startswith("lr")})
    lr_keys = sorted({k for r in records for k in r if k.startswith("lr")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[3, 1])
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r and math.isfinite(r[k])]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), label=k)
    if keys and all(r[k] > 0 for r in records for k in keys if k in r and math.isfinite(r[k])):
        axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("losses")
    if keys:
        axes[0].legend(fontsize=8)
    for k in lr_keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        axes[1].plot(*zip(*pts, strict=True), label=k)
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate")
    if lr_keys:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / CURVES
    tmp = out.with_name(".tmp-" + CURVES)
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
