"""Fréchet distance in a frozen encoder's feature space ("FD_DINOv2"-style; no Inception needed).

Stein et al. 2023 ("Exposing flaws of generative model evaluation metrics…") compute the Fréchet
distance on DINOv2 features instead of Inception's. We accept any
:class:`repackctl.encoders.base.FrozenEncoder` and use the **mean of its patch tokens** (B, C) as
the per-image feature, not the CLS token: a randomly initialised DINOv3's CLS barely depends on its
input (std ~6e-6 across a batch), so a CLS-based FD would call any two image sets equal, while
pooled patch tokens carry the content for trained and random weights alike. Published FD_DINOv2
numbers (dgm-eval) use the network's pooled CLS output, so ours are not interchangeable with
them; the result says which feature was used.

The encoder does its own resize and normalisation (``FrozenEncoder.preprocess``); images enter as
uint8 (N, H, W, 3) and are mapped to [-1, 1] NCHW here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from repackctl.encoders.base import FrozenEncoder
from repackctl.errors import DataError
from repackctl.metrics.adm import ImagesLike, count_images, iter_image_batches
from repackctl.metrics.frechet import FDMethod, FeatureStats, StatsFile, frechet_distance
from repackctl.progress import ProgressFactory, null_progress

FEATURE_RULE = "mean of patch tokens (CLS and registers excluded)"


def uint8_to_model(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float [-1, 1] (B, 3, H, W) on ``device``."""
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
    return x / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]


@torch.no_grad()
def encoder_feature_stats(
    encoder: FrozenEncoder,
    images: ImagesLike,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: ProgressFactory = null_progress,
    description: str = "encoder features",
) -> FeatureStats:
    """Streaming float64 statistics of mean-pooled patch tokens (C-dim) over a set of images."""
    device = (
        torch.device(device)
        if device is not None
        else next(encoder.parameters(), torch.empty(0)).device
    )
    encoder.eval()
    stats = FeatureStats(dim=encoder.spec.dim)
    with progress(description, total=count_images(images), unit="img") as bar:
        for batch in iter_image_batches(images, batch_size):
            x = uint8_to_model(batch, device)  # (B, 3, H, W)
            tokens, _ = encoder(x)  # (B, T, C)
            pooled = tokens.float().mean(dim=1)  # (B, C)
            stats.update(pooled.double().cpu())
            bar.advance(x.shape[0])
    if stats.n < 2:
        raise DataError(
            f"{description}: FD needs at least 2 images, got {stats.n}",
            hint="pass more images (the score is only meaningful with thousands)",
        )
    return stats


def _check_reference_weights(encoder: FrozenEncoder, reference: FeatureStats | StatsFile) -> None:
    """Refuse reference statistics whose metadata names other encoder weights (by sha256) than
    ``encoder``'s; bare moments (no metadata) are not checked."""
    meta = getattr(reference, "metadata", {}) or {}
    theirs, ours = meta.get("weights_sha256"), encoder.spec.weights_sha256
    if theirs and theirs != ours:
        raise DataError(
            "reference statistics were computed with other encoder weights "
            f"({theirs[:12]}… vs {str(ours)[:12]}…)",
            hint="recompute the reference statistics with this encoder",
        )


def compute_encoder_fd(
    encoder: FrozenEncoder,
    generated: ImagesLike,
    reference: ImagesLike | FeatureStats | StatsFile,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    fd_method: FDMethod = "sqrtm",
    progress: ProgressFactory = null_progress,
) -> dict[str, Any]:
    """FD between generated and reference images in ``encoder``'s pooled patch-token space.

    Returns ``{'fd', 'n_generated', 'n_reference', 'feature', 'encoder' (spec attrs), 'fd_method',
    'notes', 'stats_generated', 'stats_reference'}``; the two stats entries are
    :class:`FeatureStats` (save them with ``save_stats``), the rest is JSON-safe.
    """
    if isinstance(reference, FeatureStats | StatsFile):
        _check_reference_weights(encoder, reference)  # before the samples' features
    gen = encoder_feature_stats(
        encoder, generated, batch_size=batch_size, device=device, progress=progress,
        description="encoder: generated",
    )  # fmt: skip
    if isinstance(reference, FeatureStats | StatsFile):
        ref = reference
    else:
        ref = encoder_feature_stats(
            encoder, reference, batch_size=batch_size, device=device, progress=progress,
            description="encoder: reference",
        )  # fmt: skip
    notes = []
    n_min = min(gen.n, ref.n)
    if n_min <= encoder.spec.dim:
        notes.append(
            f"{n_min} samples for {encoder.spec.dim} feature dimensions: the covariance is "
            "singular and the FD biased upward; use many more samples than dimensions"
        )
    fd = frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma, method=fd_method)
    return {
        "fd": fd,
        "n_generated": gen.n,
        "n_reference": ref.n,
        "feature": FEATURE_RULE,
        "encoder": encoder.spec.attrs(),
        "fd_method": fd_method,
        "notes": notes,
        "stats_generated": gen,
        "stats_reference": ref if isinstance(ref, FeatureStats) else ref.as_stats(),
    }
