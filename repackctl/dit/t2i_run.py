"""`repackctl train t2i`: a text-to-image MMDiT on packed latents and cached captions (+ REPA).

The same engine, transport, REPA, EMA, checkpoints and bit-identical resume as `train dit`
(``repackctl.dit.run``); the task is ``repackctl.dit.t2i_task.T2ITask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from repackctl.dit.run import DiTTrainResult, record_latents, resume_and_train
from repackctl.dit.t2i_task import build_t2i_task, t2i_run_dir
from repackctl.dit.task import check_flip
from repackctl.progress import ProgressFactory, null_progress
from repackctl.settings.resume import record_resolved

if TYPE_CHECKING:
    from repackctl.dit.t2i_task import T2ITask
    from repackctl.settings import Settings
    from repackctl.train.config import TrainConfig


@dataclass
class T2ITrainResult(DiTTrainResult):
    """What ``train_t2i`` did, for the CLI to render: ``train dit``'s fields + the captions."""

    text_id: str = ""


def train_t2i(
    settings: Settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> T2ITrainResult:
    """Train (or resume) the text-to-image MMDiT that ``settings.t2i`` describes.

    Resuming an existing run starts from the settings it was started with (as ``train dit``).
    """

    def build(
        resolved: Settings, sources: dict[str, str] | None = None
    ) -> tuple[T2ITask, TrainConfig]:
        task, config = build_t2i_task(resolved, sources)
        check_flip(task.data, "t2i", sources)
        record_text_group(config_record, task.data.text_id)
        record_latents(config_record, "t2i", task.data.ref)
        return task, config

    task, result = resume_and_train(settings, config_record, progress, "t2i", t2i_run_dir, build)
    return T2ITrainResult.of(task, result, text_id=task.data.text_id)


def record_text_group(record: dict | None, text_id: str) -> None:
    """Record the caption group the run trains on when no layer named it (``--text-features``
    not given; ``settings.resume.record_resolved``): a resume after another group was added to
    the entry would pick that one. Runs from before this was recorded fall back on their
    checkpoint's group (``t2i_task.run_text_group``)."""
    record_resolved(record, "t2i", {"text_features": text_id})
