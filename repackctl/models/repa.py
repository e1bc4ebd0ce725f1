"""REPA: align a DiT hidden state with a frozen encoder's patch tokens.

Follows Yu et al. 2025, "Representation Alignment for Generation" (sihyun-yu/REPA ``models/sit.py``
``build_mlp`` and ``loss.py``): an MLP projector D → 2048 → 2048 → E with SiLU applied to every
token after block 8 (of 28), initialised as SiT's ``_basic_init`` (Xavier-uniform weights, zero
biases), and a loss equal to the negative cosine similarity per token, averaged. Targets on
another token grid (e.g. 16×16 encoder tokens for an 8×8 DiT at patch 2) are resampled bilinearly
on the 2-D grid. Shapes: see the legend in ``repackctl.models``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from repackctl import kernels
from repackctl.errors import ConfigError

REPA_REFERENCE_DEPTH = 28  # XL depth of the REPA paper
REPA_REFERENCE_LAYER = 8  # alignment after block 8 of 28


class REPAProjector(nn.Module):
    """Token-wise MLP from the DiT width D to the encoder width E (SiLU between layers)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.initialize()

    def initialize(self) -> None:
        """REPA's init (SiT ``initialize_weights`` ``_basic_init``, which covers the projectors):
        Xavier-uniform weights and zero biases, not PyTorch's default Kaiming-uniform."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(h)  # (B, T, D) → (B, T, E)


def default_repa_depth(depth: int) -> int:
    """Block after which to align: 8 for 28 blocks, scaled proportionally, at least 1."""
    if depth < 1:
        raise ConfigError(f"model depth {depth} must be ≥ 1", hint="check the DiT config")
    return max(1, min(depth, round(depth * REPA_REFERENCE_LAYER / REPA_REFERENCE_DEPTH)))


def _grid_side(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConfigError(
            f"{what} has {tokens} tokens, not a square grid; cannot resample it",
            hint="REPA needs square token grids (drop CLS/register tokens from encoder features)",
        )
    return side


def resample_tokens(tokens: Tensor, num_tokens: int) -> Tensor:
    """Bilinearly resample (B, T', E) tokens on their square grid to (B, T, E)."""
    b, t_src, e = tokens.shape
    if t_src == num_tokens:
        return tokens
    src = _grid_side(t_src, "the REPA target")
    dst = _grid_side(num_tokens, "the DiT hidden state")
    grid = tokens.transpose(1, 2).reshape(b, e, src, src)  # (B, E, s', s')
    # Bilinear with half-pixel centres (align_corners=False): a 2× reduction averages 2×2 cells.
    grid = F.interpolate(grid.float(), size=(dst, dst), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)  # (B, T, E)


def repa_loss(projected: Tensor, target: Tensor) -> Tensor:
    """Mean over samples and tokens of −cos(projected, target); −1 is perfect alignment.

    projected: (B, T, E) projector output; target: (B, T', E) frozen encoder tokens (resampled
    to the DiT's grid when T' ≠ T).
    """
    if projected.ndim != 3 or target.ndim != 3 or projected.shape[0] != target.shape[0]:
        raise ConfigError(
            f"REPA shapes {tuple(projected.shape)} and {tuple(target.shape)} are not (B, T, E)",
            hint="pass projector output and encoder patch tokens of the same batch",
        )
    if projected.shape[-1] != target.shape[-1]:
        raise ConfigError(
            f"projector width {projected.shape[-1]} ≠ encoder width {target.shape[-1]}",
            hint="build REPAProjector with out_dim equal to the encoder's token width",
        )
    target = resample_tokens(target, projected.shape[1])  # (B, T, E)
    if kernels.fused(projected.device):  # mean of 1 − cos, fused: −cos = that − 1
        return kernels.cosine_loss(projected, target, backend="triton") - 1
    cos = F.cosine_similarity(projected.float(), target.float(), dim=-1, eps=1e-8)  # (B, T)
    return -cos.mean()
