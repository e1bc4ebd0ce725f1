"""`repackctl train t2i`: a text-to-image MMDiT on packed latents and cached captions (+ REPA).

The same engine, transport, REPA, EMA, checkpoints and bit-identical resume as `train dit`
(``repackctl.dit.run``); the task is ``repackctl.dit.t2i_task.T2ITask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repackctl.dit.run import resume_and_train
from repackctl.dit.t2i_task import build_t2i_task, t2i_run_dir
from repackctl.progress import ProgressFactory, null_progress
from repackctl.train.loop import TrainResult


@dataclass
class T2ITrainResult:
    """What ``train_t2i`` did, for the CLI to render."""

    run_dir: Path
    result: TrainResult
    model_id: str
    num_params: int
    latents: str
    entry: str
    text_id: str
    features: str | None
    num_samples: int


def train_t2i(
    settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> T2ITrainResult:
    """Train (or resume) the text-to-image MMDiT that ``settings.t2i`` describes.

    Resuming an existing run starts from the settings it was started with (as ``train dit``).
    """
    task, result = resume_and_train(
        settings, config_record, progress, "t2i", t2i_run_dir, build_t2i_task
    )
    return T2ITrainResult(
        run_dir=result.run_dir,
        result=result,
        model_id=task.spec.model_id,
        num_params=task.num_params,
        latents=task.data.ref.pack_id,
        entry=task.data.ref.entry,
        text_id=task.data.text_id,
        features=task.data.features_id,
        num_samples=len(task.data),
    )
