"""The stage-agnostic training engine (pack + GAN, DiT + REPA, refiner); see ``trainer.py``."""

from repackctl.train.checkpoint import (
    latest_checkpoint,
    load_model_weights,
    load_weights,
    read_state,
)
from repackctl.train.config import TrainConfig
from repackctl.train.ema import EMA
from repackctl.train.protocol import OptimizerSpec, StepOutput, TrainResult, TrainTask
from repackctl.train.sampler import BlockSampler, Position
from repackctl.train.trainer import Trainer, train

__all__ = [
    "EMA",
    "BlockSampler",
    "OptimizerSpec",
    "Position",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "latest_checkpoint",
    "load_model_weights",
    "load_weights",
    "read_state",
    "train",
]
