"""Latent-Guided Refiner: a U-Net that restores detail in decoded images, guided by the latent.

Follows the refiner of guanfangdong/RePack-then-Refine (``stage3/networks.py``, ``RefineUNet``):
the input is the stage-1 reconstruction concatenated with the packed latent bilinearly upsampled
to the image size (3 + d channels); a 3×3 conv in, an encoder path of ResBlocks with strided-conv
downsampling, a middle ResBlock–Attention–ResBlock, a decoder path with bilinear upsampling that
concatenates the encoder path's features at each level (skip connections), one more skip from the
input conv, then GroupNorm–SiLU–3×3 conv out. Self-attention sits where the feature map's side is
in ``attn_resolutions`` (64² and 32² at 256² in the paper). At base width 128 it has ≈ 55.6 M
parameters, like the official one.

Two output modes:
- ``"image"`` (official): tanh of the last conv, the network predicts the whole image;
- ``"residual"``: the last conv's output is added to the decoded image; that conv starts at zero,
  so an untrained refiner is the identity and training only has to learn the correction.

The refiner is trained on *raw* packed latents (the stage-1 posterior, not normalised for the
DiT). The official sampler then fed it normalised DiT latents, a mismatch we must not repeat:
``RefinerConfig.latent_convention`` records what it was trained on and ``check_latents`` refuses
anything else.

Legend: B batch, d latent channels, h×w latent grid, H×W image, C feature channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repackctl.errors import ConfigError
from repackctl.pack.decoder import AttnBlock, group_norm
from repackctl.pack.projection import known_config_keys

OUTPUT_MODES = ("image", "residual")
# Which latents the refiner consumes. Only raw packed latents (the pack model's posterior, in
# its own units) are supported: the DiT's normalised latents are de-normalised before refining.
LATENT_CONVENTIONS = ("raw",)
# GroupNorm eps of the official refiner (stage3/networks.py: nn.GroupNorm's default 1e-5), so that
# an imported official refiner computes what the official code computes; refiners recorded
# without ``norm_eps`` were built with the stage-1 decoder's 1e-6 and keep it
NORM_EPS = 1e-5
LEGACY_NORM_EPS = 1e-6


@dataclass(frozen=True)
class RefinerConfig:
    """Sizes and output mode of the refiner U-Net."""

    latent_channels: int = 32
    image_channels: int = 3
    resolution: int = 256
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one encoder level per entry, each then halved
    mid_mult: int = 8  # width of the middle block, in base channels
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (64, 32)
    output: str = "image"
    latent_convention: str = "raw"
    max_groups: int = 32
    norm_eps: float = NORM_EPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.output not in OUTPUT_MODES:
            raise ConfigError(
                f"unknown refiner output mode {self.output!r}",
                f"choose one of: {', '.join(OUTPUT_MODES)}",
            )
        if self.latent_convention not in LATENT_CONVENTIONS:
            raise ConfigError(
                f"unsupported refiner latent convention {self.latent_convention!r}",
                "the refiner takes raw (de-normalised) packed latents: latent_convention='raw'",
            )
        if not self.channel_mult or min(self.base_channels, self.mid_mult, *self.channel_mult) < 1:
            raise ConfigError("refiner widths must be positive", "check channel_mult/base")
        if self.num_res_blocks < 1:
            raise ConfigError("the refiner needs at least one ResBlock per level", None)
        if self.resolution % (2 ** len(self.channel_mult)) != 0:
            raise ConfigError(
                f"image side {self.resolution} is not divisible by 2^{len(self.channel_mult)}",
                "use fewer levels (channel_mult) or a resolution divisible by 2^levels",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinerConfig:
        data = known_config_keys(cls, data, "refiner")
        data.setdefault("norm_eps", LEGACY_NORM_EPS)  # recorded before it was a field
        for key in ("channel_mult", "attn_resolutions"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv ×2 with a 1×1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, max_groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin, max_groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, max_groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, s, s)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, Cout, s, s)
        return self.shortcut(x) + h  # (B, Cout, s, s)


class LatentGuidedRefiner(nn.Module):
    """U-Net on [decoded image ⊕ upsampled latent] → refined image."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        g = cfg.max_groups
        b = cfg.base_channels
        widths = [b * m for m in cfg.channel_mult]

        self.conv_in = nn.Conv2d(cfg.image_channels + cfg.latent_channels, b, 3, padding=1)

        # Encoder path: ResBlocks (attention after them where the side is listed), then a
        # strided 3×3 conv halves the side. Each level's output is kept as a skip.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        size, cin = cfg.resolution, b
        for w in widths:
            blocks: list[nn.Module] = [ResBlock(cin, w, g)]
            blocks += [ResBlock(w, w, g) for _ in range(cfg.num_res_blocks - 1)]
            if size in cfg.attn_resolutions:
                blocks.append(AttnBlock(w, g))
            self.down.append(nn.Sequential(*blocks))
            self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            size, cin = size // 2, w

        mid = b * cfg.mid_mult
        mid_blocks: list[nn.Module] = [ResBlock(cin, mid, g)]
        if size in cfg.attn_resolutions:
            mid_blocks.append(AttnBlock(mid, g))
        mid_blocks.append(ResBlock(mid, cin, g))
        self.mid = nn.Sequential(*mid_blocks)

        # Decoder path, deep → shallow: bilinear ×2, concatenate the skip, ResBlocks. As in the
        # official network, the deepest decoder level has one ResBlock fewer (its input is the
        # widest: the middle's output plus the deepest skip).
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            size *= 2
            n_blocks = cfg.num_res_blocks - 1 if i == len(widths) - 1 else cfg.num_res_blocks
            blocks = [ResBlock(cin + w, w, g)]
            blocks += [ResBlock(w, w, g) for _ in range(max(n_blocks, 1) - 1)]
            if size in cfg.attn_resolutions:
                blocks.append(AttnBlock(w, g))
            self.up.append(nn.Sequential(*blocks))
            cin = w

        self.final_res = ResBlock(cin + b, b, g)
        self.norm_out = group_norm(b, g)
        self.conv_out = nn.Conv2d(b, cfg.image_channels, 3, padding=1)
        for module in self.modules():  # the shared blocks' GroupNorms default to stage 1's 1e-6
            if isinstance(module, nn.GroupNorm):
                module.eps = cfg.norm_eps
        self.initialize()

    def initialize(self) -> None:
        """PyTorch default init everywhere, except in residual mode: the last conv starts at
        zero so that the untrained refiner returns the decoded image unchanged."""
        if self.config.output == "residual":
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def check_latents(self, convention: str) -> None:
        """Refuse latents in another convention than the one the refiner was trained on."""
        if convention != self.config.latent_convention:
            raise ConfigError(
                f"the refiner was trained on {self.config.latent_convention!r} latents, "
                f"got {convention!r}",
                "de-normalise DiT latents with the latent stats before refining",
            )

    def forward(self, decoded: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """decoded (B, 3, H, W) in [−1, 1], raw latent (B, d, h, w) → refined (B, 3, H, W)."""
        if latent.shape[1] != self.config.latent_channels:
            raise ConfigError(
                f"latent has {latent.shape[1]} channels, the refiner expects "
                f"{self.config.latent_channels}",
                "use the refiner trained with this pack model",
            )
        z_up = F.interpolate(
            latent.to(decoded.dtype), size=decoded.shape[-2:], mode="bilinear", align_corners=False
        )  # (B, d, H, W)
        h = self.conv_in(torch.cat([decoded, z_up], dim=1))  # (B, b, H, W)
        skips = [h]
        for block, down in zip(self.down, self.downsample, strict=True):
            h = block(h)  # (B, C_l, s, s)
            skips.append(h)
            h = down(h)  # (B, C_l, s/2, s/2)
        h = self.mid(h)  # (B, C_L, s, s)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skips.pop()], dim=1))  # (B, C_l, 2s, 2s)
        h = self.final_res(torch.cat([h, skips.pop()], dim=1))  # (B, b, H, W)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)
        if self.config.output == "residual":
            return decoded + out  # (B, 3, H, W)
        return torch.tanh(out)  # (B, 3, H, W)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
