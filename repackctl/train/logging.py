"""Run metrics: ``metrics.jsonl``, TensorBoard scalars (``tb/``) and ``curves.png`` (DESIGN.md §6).

Only the main process writes. On resume, lines, events and pictures (``images/step-N.png``,
``remove_images_after``) after the resumed step, written by the interrupted process after its
last checkpoint, are dropped, so every step appears once; the checkpoint carries the running
window of the row in progress (``trainer.Window``), so the rows written again hold the same
numbers as those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repackctl.errors import name_items

if TYPE_CHECKING:
    from repackctl.progress import ProgressFactory

METRICS = "metrics.jsonl"
CURVES = "curves.png"
IMAGES = "images"  # the task's pictures of step N: images/step-%07d.png (``on_images``)
IMAGE_RE = re.compile(r"^step-(\d{7})\.png$")
# keys of a metrics line that are not loss terms (not drawn on the loss panel)
NON_LOSS = {"step", "epoch", "steps/s", "samples/s", "bad_steps", "time"}


def log_lines(progress: ProgressFactory, description: str, lines: Sequence[str]) -> None:
    """Print ``lines`` above a ``description`` bar of ``progress``; a factory with the run's
    log file (``progress.with_log_file``) writes them to ``log.txt`` too. Every training
    command logs its resume lines (``setting: old → new``, allowed changes, kept values) so."""
    if not lines:
        return
    with progress(description, total=None) as bar:
        for line in lines:
            bar.log(line)


def remove_images_after(run_dir: str | os.PathLike, step: int) -> list[str]:
    """Delete the pictures ``images/step-N.png`` with N > ``step`` (the step a run resumes from;
    0 when it starts over): an interrupted attempt drew them after its last checkpoint, from
    weights no checkpoint holds. The metrics rows and TensorBoard events of those steps are
    dropped the same way (``MetricsLogger``); the resumed run draws its own. The names are the
    engine's own (``run_files.RUN_PATH``); links are left alone. Returns a line for ``log.txt``
    naming them (none when there were none)."""
    folder = Path(run_dir) / IMAGES
    stale = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = IMAGE_RE.match(p.name)
            if m and int(m.group(1)) > step and p.is_file() and not p.is_symlink():
                stale.append(p)
    for p in stale:
        p.unlink(missing_ok=True)
    if not stale:
        return []
    names = name_items([f"{IMAGES}/{p.name}" for p in stale])
    where = "resumes" if step else "starts"
    return [
        f"removed {len(stale)} picture(s) of steps after {step}, where this run {where}: an "
        f"interrupted attempt drew them from weights no checkpoint holds ({names})"
    ]


class MetricsLogger:
    """Appends one JSON line per log step and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self.resume_step = resume_step
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy; only when training

            from repackctl.run_files import record_tb_writer

            record_tb_writer(self.run_dir)  # runs rm tells the run's events from copied ones
            # purge_step hides the events an interrupted process wrote after the checkpoint,
            # and all of them (step >= 0) when it was killed before its first checkpoint
            self._tb = SummaryWriter(
                str(self.run_dir / "tb"), purge_step=resume_step + 1 if resume_step else 0
            )

    def _truncate_after(self, step: int) -> None:
        """Keep the lines of the steps up to ``step``; drop the last line when a kill cut it
        (no newline at its end); keep a damaged line elsewhere (bytes that are not a JSON
        record, which every reader skips) as it is (reading it stopped the resume with a
        traceback)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        keep = []
        for i, line in enumerate(lines):
            rec = _record(line)
            if rec is None:
                if i < len(lines) - 1 or data.endswith(b"\n"):  # not the line a kill cut
                    keep.append(line)
            elif rec.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_bytes(b"".join(k + b"\n" for k in keep))
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

    def image(self, tag: str, path: Path, step: int) -> None:
        """Mirror a PNG the run wrote (a sample grid, reconstructions) to TensorBoard."""
        if self._tb is None or not Path(path).is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self._tb.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self._tb.flush()

    def config(self, config: dict[str, Any]) -> None:
        """The resolved config as text, and its scalar values as hparams, in TensorBoard.

        The text goes at the first step this process trains (step 0 for a fresh run): a resume
        shows the config its steps ran with beside the first one, and a rerun from the same
        checkpoint replaces the killed attempt's (purge_step hides it) instead of adding a copy.
        The hparams are the run's, written once: their own writer has no purge_step, so a
        resume that wrote them again would list the run twice."""
        if self._tb is None:
            return
        text = json.dumps(config, indent=1, default=str)
        step = self.resume_step + 1 if self.resume_step else 0
        self._tb.add_text("config", "```\n" + text + "\n```", step)
        hparams = Path(self._tb.log_dir) / "hparams"
        if not any(hparams.glob("events.out.tfevents.*")):
            flat = {k: v for k, v in config.items() if isinstance(v, bool | int | float | str)}
            self._tb.add_hparams(flat, {"hparam/placeholder": 0.0}, run_name="hparams")
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (skipping a line cut by a kill, and a damaged one)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [rec for line in path.read_bytes().splitlines() if (rec := _record(line)) is not None]


def _record(line: bytes) -> dict[str, Any] | None:
    """One line of ``metrics.jsonl`` as its record; None for a line a kill cut or a damaged
    one (bytes that are not UTF-8, not JSON, not an object, a ``step`` that is no number)."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), int | float):
        return None
    return rec


def scale_groups(records: list[dict[str, Any]], keys: list[str]) -> list[list[str]]:
    """Loss keys grouped by scale: keys whose median |value| is within 10× share a panel."""
    medians = {}
    for k in keys:
        vals = sorted(abs(r[k]) for r in records if k in r and _plottable(r[k]))
        if vals:
            medians[k] = vals[len(vals) // 2]
    groups: list[list[str]] = []
    for k in sorted(medians, key=lambda k: medians[k], reverse=True):
        for g in groups:
            ref = medians[g[0]]
            if ref == 0 or medians[k] == 0 or ref / max(medians[k], 1e-30) <= 10:
                g.append(k)
                break
        else:
            groups.append([k])
    return groups


#: the largest |value| drawn: Matplotlib's tick and log-scale arithmetic overflows near the
#: float range (a run with ``--lr 1e308`` raised in ``ticker`` and hid the run's own error)
PLOT_MAX = 1e100


def _plottable(value: Any) -> bool:
    """Whether a metric value can be drawn: a finite number within ±``PLOT_MAX``."""
    return isinstance(value, int | float) and math.isfinite(value) and abs(value) <= PLOT_MAX


def _panel(ax: Any, records: list[dict[str, Any]], keys: list[str], title: str) -> None:
    """One panel of ``keys``; a key's values that cannot be drawn (non-finite, beyond
    ±``PLOT_MAX``) are left out, and its legend says how many ("lr (2 not drawn)")."""
    values = []
    for k in keys:
        logged = [(r["step"], r[k]) for r in records if k in r]
        pts = [(step, v) for step, v in logged if _plottable(v)]
        skipped = len(logged) - len(pts)
        label = k if not skipped else f"{k} ({skipped} not drawn)"
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, marker="." if len(pts) < 20 else None)
            values += [v for _, v in pts]
        elif skipped:
            ax.plot([], [], label=label)
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    if keys:
        ax.legend(fontsize=8)


def redraw_stale_curves(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``curves.png`` where it is missing or older than the metrics (a run killed after its
    last checkpoint, before its closing drawing): a rerun with nothing left to train then leaves
    the figure an uninterrupted run ends with. None where nothing was drawn."""
    metrics, curves = Path(run_dir) / METRICS, Path(run_dir) / CURVES
    if not metrics.is_file():
        return None
    if curves.is_file() and curves.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
        return None
    return plot_curves(run_dir)


def plot_curves(run_dir: str | os.PathLike) -> Path | None:
    """Loss terms, one panel per scale (log where they span > 10×), and the lr, to
    ``curves.png``; None where there is nothing to draw, or where drawing failed. It runs in
    the cleanup of every training (``Trainer.fit``'s ``finally``, a failed run too) and at
    checkpoints, so a failure to draw is a ``Warning:`` line, never an exception that would
    replace the command's own error or stop a training; Matplotlib's numeric warnings are
    silenced, as the values it cannot draw are left out (:func:`_panel`)."""
    out = Path(run_dir) / CURVES
    tmp = out.with_name(".tmp-" + CURVES)
    try:
        records = read_metrics(run_dir)
        if not records:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _draw(records, tmp)
        os.replace(tmp, out)
    except Exception as e:  # noqa: BLE001 - drawing is a by-product: never fail the run for it
        from repackctl.progress import warn

        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warn(f"could not draw {out}: {type(e).__name__}: {e} (the metrics are in {METRICS})")
        return None
    return out


def _draw(records: list[dict[str, Any]], path: Path) -> None:
    """The figure of :func:`plot_curves` to ``path``."""
    # a bare Figure on the Agg canvas: no pyplot state, no display (training nodes have none)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for r in records for k in r if k not in NON_LOSS and not k.startswith("lr")})
    lr_keys = sorted({k for r in records for k in r if k.startswith("lr")})
    groups = scale_groups(records, keys) or [[]]
    width, height = 4.0 * (len(groups) + 1), 3.6
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # fixed margins in inches (tick labels, titles) instead of tight_layout, which draws the
    # figure once more only to measure it (a third of the plotting time)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                        top=1 - 0.35 / height, wspace=0.35)  # fmt: skip
    axes = fig.subplots(1, len(groups) + 1)
    for i, g in enumerate(groups):
        _panel(axes[i], records, g, "losses" if len(groups) == 1 else f"losses ({i + 1})")
    _panel(axes[-1], records, lr_keys, "learning rate")
    fig.savefig(path, dpi=80, format="png")
