"""Compatibility entry of the engine: ``train(task, config)`` runs a ``Trainer`` to the end.

The engine lives in ``trainer.py`` (build → resume → step → log → save), the task protocol in
``protocol.py``, collectives in ``distributed.py`` and precision/compile in ``precision.py``.
"""

from __future__ import annotations

from repackctl.train.protocol import OptimizerSpec, StepOutput, TrainResult, TrainTask
from repackctl.train.trainer import NAN_HINT, Trainer, train

__all__ = [
    "NAN_HINT",
    "OptimizerSpec",
    "StepOutput",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "train",
]
