"""A weights-free perceptual term: multi-layer feature distance in the built-in encoder
(``pack.feature_weight`` for the packing autoencoder, ``refine.feature_weight`` for the refiner).

The official stage 1 and refiner train with LPIPS-VGG, whose weights are a download; offline we
use the built-in encoder that ships with the package. Like LPIPS without its learned channel weights:

    d(x, y) = mean over layers l of  mean over positions of  ‖ f̂_l(x) − f̂_l(y) ‖²

where ``f̂_l`` are the activations of layer ``l`` unit-normalised over channels at each position.
Layers: the activations after each GELU of the convolutional stem (strides 2 and 4: edges and
texture) and the patch tokens after every transformer block (shape and appearance). The encoder
is frozen and in eval mode; gradients flow to the images only. A pure network module: the
built-in encoder with its shipped weights comes from ``repackctl.pack.load.builtin_feature_loss``.

Legend: B batch, C channels, T tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from repackctl.errors import ConfigError

__all__ = ["EncoderFeatureLoss"]

EPS = 1e-10


def _unit(f: torch.Tensor, dim: int) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=dim, keepdim=True).sqrt() + EPS)


class EncoderFeatureLoss(nn.Module):
    """Per-sample multi-layer feature distance (B,) of a frozen built-in-style encoder."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        network = getattr(encoder, "network", None)
        if network is None or not hasattr(network, "blocks") or not hasattr(network, "patch_embed"):
            raise ConfigError(
                "the feature distance needs the built-in encoder (a conv stem and blocks)",
                hint="set pack.feature_weight / refine.feature_weight to 0, or use the built-in encoder",
            )
        self.encoder = encoder.eval().requires_grad_(False)
        stem = [m for m in network.patch_embed if isinstance(m, nn.GELU)]
        self.layers = [*stem, *network.blocks]
        self.n_stem = len(stem)
        self._acts: list[torch.Tensor] = []
        for layer in self.layers:
            layer.register_forward_hook(lambda _m, _i, out: self._acts.append(out))

    def encoder_device(self) -> torch.device:
        """Where the encoder's weights are (the loss follows its inputs there once)."""
        return next(self.encoder.parameters()).device

    def train(self, mode: bool = True) -> EncoderFeatureLoss:
        return super().train(False)  # the encoder stays in eval mode

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised activations of every layer for images in [-1, 1] (B, 3, R, R)."""
        self._acts = []
        self.encoder.encode(self.encoder.preprocess(images))  # forward() is no_grad
        acts, self._acts = self._acts, []
        out = [_unit(a, 1) for a in acts[: self.n_stem]]  # (B, C, h, w)
        out += [_unit(a[:, 1:], 2) for a in acts[self.n_stem :]]  # (B, T, C), CLS dropped
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        per_layer = []
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            dist = (a - b).pow(2).sum(dim=1 if i < self.n_stem else 2)  # (B, h, w) or (B, T)
            per_layer.append(dist.flatten(1).mean(dim=1))  # (B,)
        return torch.stack(per_layer).mean(dim=0)  # (B,)
