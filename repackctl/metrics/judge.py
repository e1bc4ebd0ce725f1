"""An independent judge of generated images: a small CNN classifier trained on real images.

Scoring samples in the feature space of the encoder a method packs or aligns to (REPA's target,
RePack's input) may favour that method. The judge is a separately trained network of another
architecture (convolutions, no attention, no patch tokens): its **penultimate features** (global
average pool of the last conv stage) give a Fréchet distance space, and its **predictions** give the
class accuracy of class-conditional samples. Where no Inception weights exist (offline, toy data),
it plays Inception's role.

Training is deterministic (fixed seed, fixed order, flips drawn from a seeded generator) and short
(a CPU minute on the built-in data at 64 px). A trained judge is saved as ``judge.safetensors``
(weights) plus ``judge.json`` (config, training recipe, the sha256 of its training data, accuracy);
:func:`cached_judge` trains once per folder and reloads afterwards, and refuses to reuse a judge
trained on other data or with another recipe (it never overwrites one).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repackctl.eager_adamw import EagerAdamW
from repackctl.errors import CheckpointError, ConfigError, DataError
from repackctl.files import save_safetensors, sha256_file, write_json_atomic
from repackctl.metrics.frechet import FeatureStats, frechet_distance
from repackctl.progress import ProgressFactory, null_progress
from repackctl.temp_names import writer_tag

__all__ = [
    "Judge",
    "JudgeConfig",
    "JudgeRecipe",
    "cached_judge",
    "judge_accuracy",
    "judge_fd",
    "judge_features",
    "judge_stats",
    "load_judge",
    "save_judge",
    "train_judge",
]

WEIGHTS, META = "judge.safetensors", "judge.json"


@dataclass(frozen=True)
class JudgeConfig:
    """Shape of the judge network."""

    num_classes: int
    resolution: int
    width: int = 32  # channels of the first stage (×2 and ×4 in the later stages)


@dataclass(frozen=True)
class JudgeRecipe:
    """How the judge is trained (part of its identity in the cache)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    width: int = 32  # JudgeConfig.width


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class Judge(nn.Module):
    """Four conv stages (width ×1, ×2, ×4, ×4; stride 2, 2, 2, 1), global pool, linear head."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.stages = nn.Sequential(
            _stage(3, w, 2), _stage(w, 2 * w, 2), _stage(2 * w, 4 * w, 2), _stage(4 * w, 4 * w, 1)
        )
        self.head = nn.Linear(4 * w, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, R, R) → penultimate features (B, 4·width)."""
        return self.stages(x).mean(dim=(2, 3))  # (B, 4w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes)


def _to_model(images: np.ndarray) -> torch.Tensor:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)


def data_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Fingerprint of a training set (images and labels, shapes included)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def train_judge(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    recipe: JudgeRecipe = JudgeRecipe(),
    *,
    progress: ProgressFactory = null_progress,
) -> Judge:
    """Train a judge on uint8 images (N, R, R, 3) and int labels (N,), deterministically on CPU."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels) or len(images) < 2:
        raise DataError(f"need ≥ 2 images with one label each, got {len(images)} / {len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in 0..{num_classes - 1}")
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    judge = Judge(JudgeConfig(num_classes, int(images.shape[1]), recipe.width))
    opt = EagerAdamW(judge.parameters(), lr=recipe.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=max(recipe.steps, 1))
    x_all, y_all = _to_model(images), torch.from_numpy(labels)
    judge.train()
    with progress("train judge (CNN)", total=recipe.steps, unit="step") as bar:
        for _ in range(recipe.steps):
            idx = torch.randint(0, len(x_all), (recipe.batch_size,), generator=gen)
            x = x_all[idx]  # (B, 3, R, R)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(judge(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.advance(1)
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def _batches(
    judge: Judge, images: np.ndarray, batch: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> np.ndarray:
    out = [fn(_to_model(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def judge_features(judge: Judge, images: np.ndarray, batch: int = 200) -> np.ndarray:
    """Penultimate features (N, D) float32 of uint8 images (N, R, R, 3)."""
    return _batches(judge.eval(), images, batch, judge.features)


def judge_accuracy(judge: Judge, images: np.ndarray, labels: np.ndarray, batch: int = 200) -> float:
    """Fraction of images the judge assigns to their (intended) class."""
    logits = _batches(judge.eval(), images, batch, judge)
    return float((logits.argmax(1) == np.asarray(labels)).mean())


def judge_stats(judge: Judge, images: np.ndarray) -> FeatureStats:
    """Mean and covariance of the judge's features of ``images``."""
    return FeatureStats().update(judge_features(judge, images))


def judge_fd(judge: Judge, images: np.ndarray, reference: FeatureStats) -> float:
    """Fréchet distance between the judge's features of ``images`` and ``reference`` stats."""
    s = judge_stats(judge, images)
    return frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)


def save_judge(judge: Judge, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``judge.safetensors`` + ``judge.json`` into ``folder`` (weights first, atomically);
    ``judge.json`` records the weights' sha256 (``weights_sha256``), which :func:`load_judge`
    checks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{WEIGHTS}.{writer_tag()}"
    state = {k: v.contiguous() for k, v in judge.state_dict().items()}
    try:
        save_safetensors(state, tmp)
        sha = sha256_file(tmp)
        os.replace(tmp, folder / WEIGHTS)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old weights only
        raise
    doc = {"config": asdict(judge.config)} | (meta or {}) | {"weights_sha256": sha}
    write_json_atomic(folder / META, doc)
    return folder


def load_judge(folder: str | Path) -> tuple[Judge, dict[str, Any]]:
    """The judge saved in ``folder`` and its metadata (no pickle: safetensors + JSON). Weights
    whose sha256 differs from the one ``judge.json`` records (a changed byte, a kill between
    the two files' writes) are a ``CheckpointError``; a judge saved before ``judge.json``
    recorded it loads as before."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    redo = f"move {folder} aside and run again to train a new one"
    try:
        meta = json.loads((folder / META).read_text())
        judge = Judge(JudgeConfig(**meta["config"]))
        want = meta.get("weights_sha256")
        if want is not None and sha256_file(folder / WEIGHTS) != want:
            raise CheckpointError(
                f"the judge's weights {folder / WEIGHTS} do not match the sha256 that "
                f"{META} records ({str(want)[:12]}…): the file was changed or cut short",
                redo,
            )
        judge.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"cannot read the judge in {folder}: {e}", redo) from None
    return judge.eval().requires_grad_(False), meta


def cached_judge(
    folder: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    recipe: JudgeRecipe = JudgeRecipe(),
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: ProgressFactory = null_progress,
) -> tuple[Judge, dict[str, Any]]:
    """The judge of ``folder``, trained on (images, labels) the first time, reloaded afterwards.

    ``val`` (images, labels) measures the accuracy recorded in ``judge.json``.
    """
    folder = Path(folder)
    want = {"data_sha256": data_sha256(images, labels), "recipe": asdict(recipe)}
    if (folder / META).is_file():
        judge, meta = load_judge(folder)
        have = {k: meta.get(k) for k in want}
        if have != want:
            raise ConfigError(
                f"the judge in {folder} was trained on other data or with another recipe "
                f"({have['recipe']} vs {want['recipe']})",
                f"use another folder, or move {folder} aside to train a new judge",
            )
        return judge, meta
    judge = train_judge(images, labels, num_classes, recipe, progress=progress)
    meta = dict(want, n_train=len(images), train_accuracy=judge_accuracy(judge, images, labels))
    if val is not None:
        meta |= {"n_val": len(val[0]), "val_accuracy": judge_accuracy(judge, *val)}
    save_judge(judge, folder, meta)
    return judge, load_judge(folder)[1]
