"""One training loop for every stage (pack + GAN, DiT + REPA, refiner); see ``loop.py``."""

from repackctl.train.checkpoint import (
    latest_checkpoint,
    load_model_weights,
    load_weights,
    read_state,
)
from repackctl.train.config import TrainConfig
from repackctl.train.ema import EMA
from repackctl.train.loop import OptimizerSpec, StepOutput, TrainResult, TrainTask, train
from repackctl.train.sampler import BlockSampler, Position

__all__ = [
    "EMA",
    "BlockSampler",
    "OptimizerSpec",
    "Position",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "latest_checkpoint",
    "load_model_weights",
    "load_weights",
    "read_state",
    "train",
]
