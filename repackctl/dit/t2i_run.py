"""`repackctl train t2i`: a text-to-image MMDiT on packed latents and cached captions (+ REPA).

The same engine, transport, REPA, EMA, checkpoints and bit-identical resume as `train dit`
(``repackctl.dit.run``); the task is ``repackctl.dit.t2i_task.T2ITask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from repackctl.dit.run import DiTTrainResult, record_latents, resume_and_train
from repackctl.dit.t2i_task import build_t2i_task, t2i_run_dir
from repackctl.progress import ProgressFactory, null_progress

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
        record_text_group(config_record, task.data.text_id)
        record_latents(config_record, "t2i", task.data.ref)
        return task, config

    task, result = resume_and_train(settings, config_record, progress, "t2i", t2i_run_dir, build)
    return T2ITrainResult.of(task, result, text_id=task.data.text_id)


# the source of a caption group that no layer gave, resolved when the run started: a "stored"
# value, so that resuming reuses it (``settings.resume.GIVEN``) whatever groups the entry has then
RESOLVED_AT_START = "stored run config (resolved when the run started)"


def record_text_group(record: dict | None, text_id: str) -> None:
    """Put the caption group the run trains on into the settings record a new run stores
    (``config.json`` → extra.settings) when no layer named it (``--text-features`` not given).

    Without it the record says None, and a resume after another group was added to the entry
    would pick that one. (A resumed run's record is the reconciled one, which already carries
    the stored value; runs from before this was recorded fall back on their checkpoint's group,
    ``t2i_task.run_text_group``.)"""
    if record is None:
        return
    values = record.setdefault("values", {}).setdefault("t2i", {})
    if values.get("text_features") is None:
        values["text_features"] = text_id
        record.setdefault("sources", {})["t2i.text_features"] = RESOLVED_AT_START
