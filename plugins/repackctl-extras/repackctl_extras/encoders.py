"""`patchpix`: raw pixel patches through a fixed, seeded random projection.

A baseline "encoder" with no learned weights: each p×p patch (p = 8) is flattened and projected
to 64 channels by a seeded orthogonal matrix, then layer-normalised. It carries colour and layout
but no semantics, which makes it a useful control next to DINO features.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from repackctl.encoders.base import EncoderSpec, FrozenEncoder
from repackctl.errors import WeightsError

PATCH = 8
DIM = 64


class PatchPixels(FrozenEncoder):
    """Flattened pixel patches → fixed orthogonal projection → LayerNorm."""

    def __init__(self, spec: EncoderSpec, seed: int) -> None:
        super().__init__(spec)
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(3 * PATCH * PATCH, DIM, generator=g))
        self.register_buffer("proj", q)  # (3·p·p, C)
        self.norm = nn.LayerNorm(DIM, elementwise_affine=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = nn.functional.unfold(x, kernel_size=PATCH, stride=PATCH)  # (B, 3·p·p, T)
        tokens = self.norm(p.transpose(1, 2) @ self.proj)  # (B, T, C)
        return tokens, tokens.mean(1)  # (B, T, C), (B, C)


def patch_pixels(
    *, weights: str | None = None, layer: int | None = None, resolution: int = 64, seed: int = 0
) -> PatchPixels:
    """Factory registered as encoder id ``patchpix``."""
    if weights not in (None, "random"):
        raise WeightsError("patchpix has no weights to load", "drop --weights for this encoder")
    if layer is not None:
        raise WeightsError("patchpix has a single layer", "drop --layer for this encoder")
    digest = hashlib.sha256(f"patchpix:{seed}".encode()).hexdigest()
    spec = EncoderSpec(
        id="patchpix",
        arch="patch-pixels-orthogonal",
        patch_size=PATCH,
        input_size=resolution,
        dim=DIM,
        grid=resolution // PATCH,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights=f"seeded:{seed}",
        weights_sha256=digest,
    )
    return PatchPixels(spec, seed)
