"""The independent judge (``repackctl.metrics.judge``): a small CNN trained on real images whose
features give an FD space and whose predictions give class accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread

from repackctl.errors import CheckpointError, ConfigError
from repackctl.metrics.judge import (
    JudgeRecipe,
    cached_judge,
    judge_accuracy,
    judge_fd,
    judge_features,
    judge_stats,
    load_judge,
    train_judge,
)

RECIPE = JudgeRecipe(steps=30, batch_size=16, lr=3e-3, seed=1)


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by colour only: reddish vs bluish noise images (16 px)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, 16, 16, 3))
    images[labels == 0, ..., 0] += 120
    images[labels == 1, ..., 2] += 120
    return images.astype(np.uint8), labels


def test_training_is_deterministic_and_learns() -> None:
    x, y = _data()
    with one_torch_thread():
        a = train_judge(x, y, 2, RECIPE)
        b = train_judge(x, y, 2, RECIPE)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    xv, yv = _data(32, seed=5)
    assert judge_accuracy(a, xv, yv) >= 0.9
    assert judge_features(a, xv).shape == (32, a.feature_dim)


def test_fd_is_zero_for_the_reference_and_grows_with_a_shift() -> None:
    x, y = _data()
    judge = train_judge(x, y, 2, RECIPE)
    ref = judge_stats(judge, x)
    assert abs(judge_fd(judge, x, ref)) < 1e-4  # sqrtm round-off of a rank-deficient covariance
    red_only = x[y == 0]  # one class only: a mode-dropping generator
    assert judge_fd(judge, red_only, ref) > 0.05


def test_cached_judge_trains_once_and_refuses_other_data(tmp_path) -> None:
    x, y = _data()
    judge, meta = cached_judge(tmp_path / "judge", x, y, 2, RECIPE, val=_data(32, seed=5))
    assert (tmp_path / "judge" / "judge.safetensors").is_file()
    assert meta["val_accuracy"] >= 0.9 and meta["recipe"]["steps"] == 30
    stamp = (tmp_path / "judge" / "judge.safetensors").stat().st_mtime_ns
    again, meta2 = cached_judge(tmp_path / "judge", x, y, 2, RECIPE)
    assert (tmp_path / "judge" / "judge.safetensors").stat().st_mtime_ns == stamp  # not retrained
    assert meta2 == meta
    assert np.array_equal(judge_features(again, x), judge_features(judge, x))
    with pytest.raises(ConfigError, match="other data"):
        cached_judge(tmp_path / "judge", x[:-1], y[:-1], 2, RECIPE)
    assert (tmp_path / "judge" / "judge.safetensors").stat().st_mtime_ns == stamp  # kept


def test_a_corrupt_judge_is_an_error_naming_the_folder(tmp_path) -> None:
    x, y = _data()
    cached_judge(tmp_path / "j", x, y, 2, RECIPE)
    (tmp_path / "j" / "judge.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=str(tmp_path / "j")):
        load_judge(tmp_path / "j")
