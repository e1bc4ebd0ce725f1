"""The packing autoencoder: frozen-encoder tokens → packed latent posterior → image.

RePack stage 1 (guanfangdong/RePack-then-Refine, ``stage1/repack/models/autoencoder.py``): the
frozen encoder's patch tokens (computed once, read from the cache) go through a per-token
projection C → d (``RePackProjection``: a diagonal Gaussian, in the official two-conv form or
folded into one affine map; ``PCAProjection``: deterministic); a conv decoder (with the official
``post_quant_conv`` when the projection has the official form) maps the d×h×w latent to pixels.
The encoder itself is not part of this module: its tokens are an input, so training never runs
the frozen network.

``PackAutoencoder.config.to_dict()`` is JSON-safe and ``PackAutoencoder.from_dict`` rebuilds the
same architecture, so a checkpoint folder (``config.json`` + ``model.safetensors``) can rebuild
its model.

Legend: B batch, T tokens, C token channels, d latent channels, h×w grid, H×W image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from repackctl.errors import ConfigError
from repackctl.pack.decoder import Decoder, DecoderConfig
from repackctl.pack.projection import (
    DiagonalGaussian,
    ProjectionConfig,
    build_projection,
    known_config_keys,
    projection_config,
)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Projection + decoder; enough to rebuild the architecture (weights come separately)."""

    projection: ProjectionConfig
    decoder: DecoderConfig

    def __post_init__(self) -> None:
        if self.projection.latent_channels != self.decoder.latent_channels:
            raise ConfigError(
                f"the projection makes {self.projection.latent_channels} latent channels, the "
                f"decoder expects {self.decoder.latent_channels}",
                "set the same latent_channels for both",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"projection": self.projection.to_dict(), "decoder": self.decoder.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        data = known_config_keys(cls, data, "autoencoder")
        missing = [k for k in ("projection", "decoder") if k not in data]
        if missing:
            raise ConfigError(
                f"autoencoder config lacks {', '.join(missing)}",
                "the checkpoint's config.json is incomplete; rebuild it from the run config",
            )
        return cls(
            projection=ProjectionConfig.from_dict(data["projection"]),
            decoder=DecoderConfig.from_dict(data["decoder"]),
        )


class PackAutoencoder(nn.Module):
    """Tokens → posterior over the packed latent → reconstructed image."""

    def __init__(self, projection: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        if projection.latent_channels != decoder.config.latent_channels:
            raise ConfigError(
                f"projection gives {projection.latent_channels} channels, decoder takes "
                f"{decoder.config.latent_channels}",
                "build both with the same latent_channels",
            )
        self.projection = projection
        self.decoder = decoder

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> PackAutoencoder:
        return cls(build_projection(config.projection), Decoder(config.decoder))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackAutoencoder:
        return cls.from_config(AutoencoderConfig.from_dict(data))

    @property
    def config(self) -> AutoencoderConfig:
        return AutoencoderConfig(projection_config(self.projection), self.decoder.config)

    @property
    def latent_channels(self) -> int:
        return self.decoder.config.latent_channels

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's final conv weight (for the adaptive GAN weight)."""
        return self.decoder.last_layer

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> DiagonalGaussian:
        """Tokens (B, T, C) or grid (B, C, h, w) → posterior with mean (B, d, h, w)."""
        return self.projection.encode(tokens, grid)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, d, h, w) → image (B, 3, H, W), roughly in [−1, 1] (no tanh)."""
        return self.decoder(z)  # (B, 3, H, W)

    def forward(
        self,
        tokens: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        grid: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct from tokens; ``sample`` draws z from the posterior (training), else its
        mode (evaluation)."""
        posterior = self.encode(tokens, grid)
        z = posterior.sample(generator) if sample else posterior.mode()  # (B, d, h, w)
        return self.decode(z), posterior  # (B, 3, H, W)
