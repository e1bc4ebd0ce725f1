"""`repackctl train t2i`: a text-to-image MMDiT on packed latents and cached captions (+ REPA).

The same engine, transport, REPA, EMA, checkpoints and bit-identical resume as `train dit`
(``repackctl.dit.run``); the task is ``repackctl.dit.t2i_task.T2ITask``.
"""

from __future__ import annotations

from dataclasses import dataclass

from repackctl.dit.run import DiTTrainResult, resume_and_train
from repackctl.dit.t2i_task import build_t2i_task, t2i_run_dir
from repackctl.progress import ProgressFactory, null_progress


@dataclass
class T2ITrainResult(DiTTrainResult):
    """What ``train_t2i`` did, for the CLI to render: ``train dit``'s fields + the captions."""

    text_id: str = ""


def train_t2i(
    settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> T2ITrainResult:
    """Train (or resume) the text-to-image MMDiT that ``settings.t2i`` describes.

    Resuming an existing run starts from the settings it was started with (as ``train dit``).
    """
    task, result = resume_and_train(
        settings, config_record, progress, "t2i", t2i_run_dir, build_t2i_task
    )
    return T2ITrainResult.of(task, result, text_id=task.data.text_id)
