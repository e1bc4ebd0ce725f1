"""A weights-free perceptual distance: multi-layer features of the frozen built-in encoder.

LPIPS needs VGG weights that cannot be downloaded offline. ``refine.perceptual = "encoder"``
uses instead the token features after every block of the frozen encoder (the built-in ViT by
default), each unit-normalised over channels as LPIPS does with VGG activations, compared by squared
difference, averaged over tokens and layers. It has no learned per-channel weights (LPIPS's "lin"
layers), so it is a plain multi-layer feature distance, not a calibrated perceptual metric.
"""

from __future__ import annotations

import torch
from torch import nn

from repackctl.encoders.base import FrozenEncoder
from repackctl.errors import ConfigError


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)  # (B, T, C)


class EncoderPerceptual(nn.Module):
    """``d(x, y)`` (B,) between images in [-1, 1] (B, 3, R, R), through a frozen ViT's blocks."""

    def __init__(self, encoder: FrozenEncoder) -> None:
        super().__init__()
        blocks = getattr(getattr(encoder, "network", None), "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or not len(blocks):
            raise ConfigError(
                f"encoder {encoder.spec.id!r} exposes no transformer blocks for the "
                "weights-free perceptual term",
                "use the built-in encoder, or refine.perceptual lpips with local LPIPS weights",
            )
        self.encoder = encoder.eval().requires_grad_(False)
        self.blocks = list(blocks)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Token features (B, N, C) after each block the encoder runs (gradients flow)."""
        feats: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda m, i, o: feats.append(o)) for b in self.blocks]
        try:
            self.encoder.encode(self.encoder.preprocess(images))
        finally:
            for h in hooks:
                h.remove()
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fy = self.features(y)
        fx = self.features(x)
        per_layer = [
            ((_unit(a) - _unit(b)) ** 2).sum(-1).mean(-1) for a, b in zip(fx, fy, strict=True)
        ]
        return torch.stack(per_layer).mean(0)  # (B,)
