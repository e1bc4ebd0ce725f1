"""One class-conditional Diffusion Transformer covering DiT/SiT and LightningDiT.

- DiT / SiT (Peebles & Xie 2023; Ma et al. 2024; REPA's backbone): LayerNorm without affine,
  GELU-tanh MLP ×4, fixed 2-D sin-cos position, adaLN-Zero.
- LightningDiT (Yao et al. 2025, hustvl/LightningDiT ``models/lightningdit.py``; the official
  RePack-then-Refine stage 2): RMSNorm with gain, SwiGLU (hidden ⌊2/3·4·D⌋), 2-D RoPE **plus**
  the fixed sin-cos position, qkv bias, adaLN-Zero (optionally without shift), optional qk-norm.

The network predicts the velocity of our linear path (t = 0 data, t = 1 noise; see
``repackctl.transport``). ``t`` is embedded raw. The model reads like the paper: patch embed +
position → N blocks conditioned on c = emb(t) + emb(y) → final adaLN layer → unpatchify.
Shapes: see the legend in ``repackctl.models``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from repackctl.errors import ConfigError
from repackctl.models.config import GridConfig
from repackctl.models.layers import (
    Attention,
    GeluMlp,
    LabelEmbedder,
    Rope2d,
    SwiGLU,
    TimestepEmbedder,
    make_norm,
    norm_modulate,
    sincos_pos_embed_2d,
    swiglu_hidden,
)

Family = Literal["lightningdit", "dit", "sit"]
FAMILIES: tuple[str, ...] = ("lightningdit", "dit", "sit")


@dataclass(frozen=True)
class DiTConfig(GridConfig):
    """Everything that fixes the network's shape and behaviour; JSON round-trips exactly.

    ``family`` records the training objective the variant was published with (DiT and SiT share
    the network); the architecture itself is given by the explicit fields below it.
    """

    KIND: ClassVar[str] = "DiT"

    family: Family
    in_channels: int  # C latent channels in and out
    input_size: int  # latent side h = w
    patch_size: int  # p ∈ {1, 2, 4, 8}
    depth: int  # number of blocks
    hidden_size: int  # D
    num_heads: int  # H
    num_classes: int = 1000  # the null class id is num_classes
    class_dropout: float = 0.1  # label dropout probability during training (CFG)
    norm: Literal["rmsnorm", "layernorm"] = "layernorm"
    mlp: Literal["swiglu", "gelu"] = "gelu"
    mlp_ratio: float = 4.0
    rope: bool = False  # 2-D RoPE in attention (in addition to the absolute sin-cos table)
    qkv_bias: bool = True
    qk_norm: bool = False
    no_shift: bool = False  # LightningDiT's "wo_shift": 4-way adaLN (scale, gate) in blocks
    grad_checkpointing: bool = False  # recompute block activations in backward (memory ↔ time)
    name: str = ""  # registered id this config came from (informational)

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {FAMILIES}")
        if self.norm not in ("rmsnorm", "layernorm"):
            problems.append(f"norm {self.norm!r} is not 'rmsnorm' or 'layernorm'")
        if self.mlp not in ("swiglu", "gelu"):
            problems.append(f"mlp {self.mlp!r} is not 'swiglu' or 'gelu'")
        problems += self.grid_problems()
        if self.num_classes < 1:
            problems.append("num_classes must be ≥ 1")
        if not 0.0 <= self.class_dropout < 1.0:
            problems.append(f"class_dropout {self.class_dropout} is not in [0, 1)")
        if problems:
            raise ConfigError(
                "invalid DiT config: " + "; ".join(problems),
                hint="start from a registered variant (repackctl.models.variants.MODEL_FACTORIES)",
            )


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: c → (shift, scale, gate) for attention and MLP."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        # adaLN supplies scale and shift, so the norms carry no affine of their own (RMSNorm keeps
        # its gain as in LightningDiT).
        self.norm1 = make_norm(cfg.norm, d, affine=False)
        self.attn = Attention(
            d, cfg.num_heads, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, norm=cfg.norm
        )
        self.norm2 = make_norm(cfg.norm, d, affine=False)
        if cfg.mlp == "swiglu":
            self.mlp: nn.Module = SwiGLU(d, swiglu_hidden(d, cfg.mlp_ratio))
        else:
            self.mlp = GeluMlp(d, int(d * cfg.mlp_ratio))
        self.no_shift = cfg.no_shift
        n_mod = 4 if cfg.no_shift else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, n_mod * d, bias=True))

    def forward(self, x: Tensor, c: Tensor, rope: Rope2d | None) -> Tensor:
        mod = self.adaLN_modulation(c)  # (B, 6D) or (B, 4D)
        if self.no_shift:
            scale_a, gate_a, scale_m, gate_m = mod.chunk(4, dim=1)  # 4 × (B, D)
            shift_a = shift_m = None
        else:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=1)  # 6 × (B, D)
        h = self.attn(norm_modulate(self.norm1, x, shift_a, scale_a), rope)  # (B, T, D)
        x = x + gate_a.unsqueeze(1) * h  # (B, T, D)
        h = self.mlp(norm_modulate(self.norm2, x, shift_m, scale_m))  # (B, T, D)
        return x + gate_m.unsqueeze(1) * h  # (B, T, D)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map from D to p·p·C values per token."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = make_norm(cfg.norm, d, affine=False)
        self.linear = nn.Linear(d, cfg.patch_size**2 * cfg.in_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (B, D)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale))  # (B, T, p·p·C)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens (a strided conv, row-major token order)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, D, h/p, w/p)
        return x.flatten(2).transpose(1, 2)  # (B, T, D)


def init_linears_and_embedders(model: nn.Module, *embeddings: nn.Parameter) -> None:
    """DiT's recipe shared by every DiT-like network (``x_embedder``, ``t_embedder``): xavier
    linears with zero biases, the patch embedding as the linear map it is, then small
    ``embeddings`` (e.g. the class table) and time embedding, so that the conditioning starts near
    zero (in this order: the random draws of DiT's recipe). adaLN-Zero is each model's own."""

    def _xavier(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(_xavier)
    w = model.x_embedder.proj.weight  # (D, C, p, p)
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    for weight in embeddings:
        nn.init.normal_(weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)


def zero_adaln(final_layer: nn.Module, *blocks: nn.Module) -> None:
    """adaLN-Zero: zero modulation ⇒ every gate is 0 ⇒ every block starts as the identity, which
    is what makes deep DiTs train stably from scratch (DiT paper, §3.2); a zero final layer ⇒ the
    model outputs exactly 0 at init: no random velocity to unlearn."""
    for m in (*blocks, final_layer):
        nn.init.zeros_(m.adaLN_modulation[-1].weight)
        nn.init.zeros_(m.adaLN_modulation[-1].bias)
    nn.init.zeros_(final_layer.linear.weight)
    nn.init.zeros_(final_layer.linear.bias)


class DiT(nn.Module):
    """Class-conditional velocity-prediction Transformer over a (B, C, h, w) latent."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout)
        # Fixed table: a buffer (never trained) that is still saved, so a model built on the meta
        # device and filled by load_state_dict is complete; the names follow upstream's keys
        # (``pos_embed``, ``feat_rope.freqs_cos``/``freqs_sin``).
        pos = sincos_pos_embed_2d(d, cfg.grid_size, cfg.grid_size)  # (T, D)
        self.register_buffer("pos_embed", pos.unsqueeze(0))  # (1, T, D)
        head_dim = d // cfg.num_heads
        self.feat_rope = Rope2d(head_dim, cfg.grid_size, cfg.grid_size) if cfg.rope else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """The one initialisation (DiT's recipe, also LightningDiT's and REPA's)."""
        # small class embeddings: c starts near zero and no class dominates early training
        init_linears_and_embedders(self, self.y_embedder.embedding_table.weight)
        zero_adaln(self.final_layer, *self.blocks)

    # ----------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Number of learnable parameters (fixed position tables are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def null_class(self) -> int:
        """Label id of the unconditional (dropped) class, = num_classes."""
        return self.config.num_classes

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation recomputation on or off (does not change the weights)."""
        self.config = dataclasses.replace(self.config, grad_checkpointing=enabled)

    def label_drop_mask(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A seedable label-dropout mask (B,) to pass as ``forward(..., drop_mask=)``."""
        device = self.y_embedder.embedding_table.weight.device
        if generator is not None:
            device = generator.device
        return self.y_embedder.drop_mask(batch, generator=generator, device=device)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p·p·C) → (B, C, h, w), inverse of the row-major patch embedding."""
        b = x.shape[0]
        g, p, c = self.config.grid_size, self.config.patch_size, self.config.in_channels
        x = x.reshape(b, g, g, p, p, c)  # (B, h/p, w/p, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h/p, p, w/p, p)
        return x.reshape(b, c, g * p, g * p)  # (B, C, h, w)

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"latent of shape {tuple(x.shape)} does not fit model {cfg.name or cfg.family} "
                f"expecting (B, {expected[0]}, {expected[1]}, {expected[2]})",
                hint="build the model with the latent's channels and side (in_channels, input_size)",
            )
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ConfigError(
                f"t {tuple(t.shape)} and y {tuple(y.shape)} must both have shape ({x.shape[0]},)",
                hint="pass one time and one label per sample",
            )

    def embed(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        return_hidden_at: int | None = None,
        drop_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Checked inputs → patch tokens ``h`` (B, T, D) and conditioning ``c`` (B, D).

        The first lines of every forward of this family (subclasses with other block wiring
        call it too): scalar ``t`` broadcast, shapes and ``return_hidden_at`` checked, labels
        dropped in training mode when no ``drop_mask`` is given.
        """
        if t.ndim == 0:
            t = t.expand(x.shape[0])  # (B,)
        self._check_inputs(x, t, y)
        cfg = self.config
        if return_hidden_at is not None and not 1 <= return_hidden_at <= cfg.depth:
            raise ConfigError(
                f"return_hidden_at={return_hidden_at} is outside the model's 1..{cfg.depth} blocks",
                hint="use repackctl.models.repa.default_repa_depth(depth)",
            )
        if drop_mask is None and self.training and cfg.class_dropout > 0:
            drop_mask = self.label_drop_mask(x.shape[0]).to(x.device)  # (B,)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)  # (B, D)
        return h, c

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        return_hidden_at: int | None = None,
        drop_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocity at (x, t) for labels y.

        x: (B, C, h, w) noisy latent; t: (B,) or scalar in [0, 1] (0 data, 1 noise); y: (B,)
        labels in [0, num_classes] (num_classes = null class). ``drop_mask`` (B,) bool replaces
        labels by the null class; without it, training mode drops labels with probability
        ``class_dropout`` from the global RNG (pass ``label_drop_mask(B, generator)`` to seed it).
        ``return_hidden_at=k`` also returns the tokens after block k (1-based) for REPA.
        """
        h, c = self.embed(x, t, y, return_hidden_at, drop_mask)  # (B, T, D), (B, D)
        cfg = self.config
        hidden = None
        use_ckpt = cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks, start=1):
            if use_ckpt:
                h = checkpoint(block, h, c, self.feat_rope, use_reentrant=False)  # (B, T, D)
            else:
                h = block(h, c, self.feat_rope)  # (B, T, D)
            if i == return_hidden_at:
                hidden = h  # (B, T, D)
        out = self.final_layer(h, c)  # (B, T, p·p·C)
        v = self.unpatchify(out)  # (B, C, h, w)
        if return_hidden_at is not None:
            return v, hidden  # (B, C, h, w), (B, T, D)
        return v
