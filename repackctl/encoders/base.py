"""The frozen-encoder contract.

An encoder maps images in [-1, 1] (B, 3, R, R) at the dataset resolution R to patch tokens
(B, T, C) with T = h·w on an h×w grid, and a pooled/CLS vector (B, C). It resizes to its own
``input_size`` and applies its own mean/std internally, so callers never need to know them.
Architecture and weights are separate: ``EncoderSpec`` describes both, and ``spec.attrs()`` is what
the cache stores to decide whether two extractions are the same.

Encoder factories are registered under the ``repackctl.encoders`` entry-point group and called as
``factory(weights=..., layer=..., resolution=..., seed=...)`` where ``weights`` is ``None`` (the
default source: shipped file or hub), ``"random"`` (seeded random init, recorded as such) or a
path to a ``.safetensors``/``.pth`` file (loaded without unpickling code).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that changes an encoder's numbers."""

    id: str  # registry id or resolved name, e.g. "dinov3-vitb16" (safe in paths)
    arch: str  # architecture name, e.g. timm "vit_base_patch16_dinov3"
    patch_size: int
    input_size: int  # images are resized to this before the forward
    dim: int  # token channels C
    grid: int  # tokens per side: input_size // patch_size
    layer: int | None = None  # None = final layer after its norm
    prefix_tokens: int = 0  # CLS + registers dropped from the token output
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    weights: str = "random"  # "builtin", "random:<seed>", "file:<name>", "hub:<tag>"
    weights_sha256: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def attrs(self) -> dict:
        """JSON-safe attributes stored beside cached features."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def entry_id(self) -> str:
        """Folder name of this encoder's features in the cache: id, layer, weights digest."""
        layer = "final" if self.layer is None else f"l{self.layer}"
        digest = (self.weights_sha256 or hashlib.sha256(self.weights.encode()).hexdigest())[:10]
        return f"{self.id}--{layer}--{self.input_size}px--{digest}"


class FrozenEncoder(nn.Module):
    """Base class: subclasses implement ``encode`` on already resized and normalised input."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (B, 3, R, R) → normalised (B, 3, S, S) with S = spec.input_size."""
        x = (images.float() + 1.0) / 2.0  # (B, 3, R, R) in [0, 1]
        if x.shape[-1] != self.spec.input_size or x.shape[-2] != self.spec.input_size:
            x = nn.functional.interpolate(
                x, size=(self.spec.input_size,) * 2, mode="bicubic", align_corners=False
            ).clamp(0.0, 1.0)
        return (x - self._mean) / self._std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input → tokens (B, T, C) and cls (B, C)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, cls = self.encode(self.preprocess(images))
        return tokens, cls  # (B, T, C), (B, C)
