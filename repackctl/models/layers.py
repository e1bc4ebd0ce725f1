"""Building blocks of the Diffusion Transformer.

Follows DiT (Peebles & Xie 2023, facebookresearch/DiT ``models.py``) for the embedders, the
adaLN modulation and the fixed 2-D sin-cos position, and LightningDiT (Yao et al. 2025,
hustvl/LightningDiT ``models/``) for RMSNorm, SwiGLU and the EVA-style 2-D rotary embedding
(EVA-02, Fang et al. 2023). Parameter names match those repositories so their weights map
one-to-one onto ours. Shapes: see the legend in ``repackctl.models``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repackctl import kernels

# --------------------------------------------------------------------------------------------
# Normalisation and feed-forward
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain (no centring, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 so bf16/fp16 activations do not lose the mean of squares.
        xf = x.float()  # (..., D)
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., D)
        return out.type_as(x) * self.weight  # (..., D)


def make_norm(kind: str, dim: int, *, affine: bool) -> nn.Module:
    """``"rmsnorm"`` (always with gain, as LightningDiT) or ``"layernorm"`` (affine optional)."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """SwiGLU hidden width ⌊2/3 · ratio · D⌋: same parameter count as a GELU MLP of ``ratio``.

    Integer arithmetic for the default ratio, so 1152 → 3072 exactly as upstream's
    ``int(2/3 * 4 * D)`` (which agrees with it for every preset).
    """
    if mlp_ratio == 4.0:
        return (8 * dim) // 3
    return int(2 / 3 * int(dim * mlp_ratio))


class SwiGLU(nn.Module):
    """Gated feed-forward ``w3(silu(x W1) * x W2)`` with the two input maps fused in ``w12``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=True)
        self.w3 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x12 = self.w12(x)  # (B, T, 2F)
        if kernels.fused(x.device):
            return self.w3(kernels.swiglu_gate(x12, backend="triton"))  # (B, T, D)
        x1, x2 = x12.chunk(2, dim=-1)  # 2 × (B, T, F)
        return self.w3(F.silu(x1) * x2)  # (B, T, D)


class GeluMlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (DiT / SiT, timm ``Mlp`` parameter names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(x), approximate="tanh")  # (B, T, F)
        return self.fc2(h)  # (B, T, D)


# --------------------------------------------------------------------------------------------
# Conditioning embedders
# --------------------------------------------------------------------------------------------


def timestep_frequencies(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features ``[cos(t·f_i), sin(t·f_i)]`` of scalar times (GLIDE / DiT layout).

    ``t`` is used raw (our t ∈ [0, 1]), not multiplied by 1000: LightningDiT and REPA do the same.
    """
    half = dim // 2
    exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half  # (dim/2,)
    freqs = torch.exp(-math.log(max_period) * exponents)  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2·(dim/2))
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """Scalar time → D-dimensional vector: sinusoidal features then a SiLU MLP."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, dim, bias=True),
            nn.SiLU(),
            nn.Linear(dim, dim, bias=True),
        )

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_frequencies(t, self.frequency_dim)  # (B, 256)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class label → vector; row ``num_classes`` is the null class used for guidance.

    The null row always exists (even with dropout 0) so any model can be sampled with CFG.
    """

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def drop_mask(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """Bernoulli(dropout) mask of labels to replace by the null class; seedable."""
        u = torch.rand(batch, generator=generator, device=device)  # (B,)
        return u < self.dropout  # (B,) bool

    def forward(self, y: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        if drop_mask is not None:
            y = torch.where(drop_mask.to(device=y.device, dtype=torch.bool), self.null_class, y)
        return self.embedding_table(y)  # (B, D)


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[sin(pos·ω), cos(pos·ω)]`` with ω_i = 10000^(−i/(dim/2)) (MAE / DiT layout)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2)  # (dim/2,)
    omega = 1.0 / 10_000.0**omega  # (dim/2,)
    out = pos.double().reshape(-1)[:, None] * omega[None]  # (T, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (T, dim)


def sincos_pos_embed_2d(
    dim: int, grid_h: int, grid_w: int, device: torch.device | None = None
) -> Tensor:
    """Fixed 2-D sin-cos position table for a row-major (grid_h, grid_w) token grid.

    As in DiT/MAE, the first half of the channels encodes the column (x) index and the second
    half the row (y) index; keeping that order keeps upstream weights compatible.
    """
    rows = torch.arange(grid_h, device=device, dtype=torch.float64)  # (gh,)
    cols = torch.arange(grid_w, device=device, dtype=torch.float64)  # (gw,)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")  # (gh, gw) each
    emb_x = _sincos_1d(dim // 2, xx)  # (T, D/2)
    emb_y = _sincos_1d(dim // 2, yy)  # (T, D/2)
    return torch.cat([emb_x, emb_y], dim=1).float()  # (T, D)


class Rope2d(nn.Module):
    """EVA-style 2-D rotary position embedding (θ = 10 000) applied to queries and keys.

    The head dimension is split in two halves: the first rotates with the row index, the
    second with the column index. Inside each half, adjacent channel pairs (2i, 2i+1) rotate
    together with frequency θ^(−4i/Dh). The tables are buffers computed from the grid, not
    weights (saved, like upstream's). Rotating q and k by angles of their positions makes q·k depend only on the
    difference of positions.
    """

    def __init__(self, head_dim: int, grid_h: int, grid_w: int, theta: float = 10_000.0) -> None:
        super().__init__()
        half = head_dim // 2  # channels per axis
        freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)  # (Dh/4,)
        rows = torch.arange(grid_h, dtype=torch.float32)  # (gh,)
        cols = torch.arange(grid_w, dtype=torch.float32)  # (gw,)
        ang_r = torch.repeat_interleave(rows[:, None] * freqs[None], 2, dim=-1)  # (gh, Dh/2)
        ang_c = torch.repeat_interleave(cols[:, None] * freqs[None], 2, dim=-1)  # (gw, Dh/2)
        angles = torch.cat(
            [
                ang_r[:, None, :].expand(grid_h, grid_w, half),
                ang_c[None, :, :].expand(grid_h, grid_w, half),
            ],
            dim=-1,
        ).reshape(grid_h * grid_w, head_dim)  # (T, Dh)
        self.register_buffer("freqs_cos", angles.cos())  # (T, Dh)
        self.register_buffer("freqs_sin", angles.sin())  # (T, Dh)

    @staticmethod
    def rotate_pairs(x: Tensor) -> Tensor:
        """(x0, x1, x2, x3, …) → (−x1, x0, −x3, x2, …): multiplication by i on each pair."""
        pairs = x.unflatten(-1, (-1, 2))  # (..., Dh/2, 2)
        x0, x1 = pairs.unbind(-1)  # 2 × (..., Dh/2)
        return torch.stack((-x1, x0), dim=-1).flatten(-2)  # (..., Dh)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, H, T, Dh); rotate in float32 so bf16 inputs keep the angle precision.
        xf = x.float()
        out = xf * self.freqs_cos + self.rotate_pairs(xf) * self.freqs_sin  # (B, H, T, Dh)
        return out.type_as(x)


# --------------------------------------------------------------------------------------------
# Attention and modulation
# --------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels).

    Optional qk-norm (per head, the known fix for NaN losses in long LightningDiT runs) and
    optional rotary embedding applied after it.
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool, qk_norm: bool, norm: str
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # qk-norm uses the block's norm kind; LayerNorm here keeps its affine as upstream does.
        self.q_norm = make_norm(norm, self.head_dim, affine=True) if qk_norm else nn.Identity()
        self.k_norm = make_norm(norm, self.head_dim, affine=True) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor, rope: Rope2d | None = None) -> Tensor:
        b, n, d = x.shape  # (B, T, D)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, T, Dh)
        q, k = self.q_norm(q), self.k_norm(k)  # (B, H, T, Dh)
        if rope is not None:
            if kernels.fused(q.device):
                cos, sin = rope.freqs_cos, rope.freqs_sin  # (T, Dh)
                q = kernels.rope_2d(q, cos, sin, backend="triton")  # (B, H, T, Dh)
                k = kernels.rope_2d(k, cos, sin, backend="triton")  # (B, H, T, Dh)
            else:
                q, k = rope(q), rope(k)  # (B, H, T, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, T, D)
        return self.proj(out)  # (B, T, D)


def norm_modulate(norm: nn.Module, x: Tensor, shift: Tensor | None, scale: Tensor) -> Tensor:
    """``modulate(norm(x), shift, scale)``; one fused kernel for RMSNorm when kernels are on."""
    if isinstance(norm, RMSNorm) and kernels.fused(x.device):
        return kernels.rmsnorm_modulate(
            x, norm.weight, shift, scale, eps=norm.eps, backend="triton"
        )  # (B, T, D)
    return modulate(norm(x), shift, scale)  # (B, T, D)


def modulate(x: Tensor, shift: Tensor | None, scale: Tensor) -> Tensor:
    """adaLN: ``x·(1 + scale) + shift`` per sample; ``shift=None`` is LightningDiT's no-shift."""
    out = x * (1 + scale.unsqueeze(1))  # (B, T, D)
    if shift is not None:
        out = out + shift.unsqueeze(1)  # (B, T, D)
    return out
