"""MMDiT: a text-conditioned Diffusion Transformer with joint text–image attention.

Follows SD3's multimodal DiT (Esser et al. 2024, "Scaling Rectified Flow Transformers") as used by
REPA for text-to-image (Yu et al. 2025, sihyun-yu/REPA ``models/mmdit.py``, ``train_t2i.py``):

- two token streams, text (the "context") and image, each with its own weights (adaLN modulation,
  norms, qkv, output projection, MLP): a "dismantled" block per stream;
- ONE attention over the concatenated text + image tokens in every block, so each stream reads
  the other; padded text keys are masked out, so the output never depends on padded content;
- adaLN-Zero conditioned on c = emb(t) + MLP(pooled text) (SD3; ``pooled_condition=False`` gives
  REPA's c = emb(t));
- image tokens get the fixed 2-D sin-cos position (and optionally 2-D RoPE); text tokens none;
- the text stream of the last block only supplies keys and values (no output projection or MLP:
  its output would be discarded), as in SD3/REPA (``pre_only``);
- a null caption (learned, or the fixed features of the empty caption as REPA's
  ``empty_context``) replaces dropped captions in training and is the unconditional branch of
  classifier-free guidance.

Time convention as everywhere in repackctl: t = 0 data, t = 1 noise, velocity target ε − x; the
guidance interval keeps ``repackctl.transport.guidance``'s rule (guided for t_lo ≤ t ≤ t_hi).
REPA: ``forward(..., return_hidden_at=k)`` also returns the image tokens after block k, exactly as
``DiT.forward`` does, so ``models.repa.REPAProjector`` and ``repa_loss`` apply unchanged.

Shapes: the legend in ``repackctl.models``, plus L text tokens, E_t text feature width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from repackctl.errors import ConfigError
from repackctl.models.config import GridConfig
from repackctl.models.dit import PatchEmbed, init_linears_and_embedders, zero_adaln
from repackctl.models.layers import (
    GeluMlp,
    RMSNorm,
    Rope2d,
    TimestepEmbedder,
    make_norm,
    modulate,
    sincos_pos_embed_2d,
)
from repackctl.models.variants import SizePreset, shaped

NullCaption = Literal["learned", "fixed"]


@dataclass(frozen=True)
class MMDiTConfig(GridConfig):
    """Everything that fixes the network's shape and behaviour; JSON round-trips exactly."""

    KIND: ClassVar[str] = "MMDiT"

    in_channels: int  # C latent channels in and out
    input_size: int  # latent side h = w
    patch_size: int  # p ∈ {1, 2, 4, 8}
    depth: int  # number of joint blocks
    hidden_size: int  # D, shared by both streams
    num_heads: int  # H
    text_dim: int = 384  # E_t: width of the text encoder's features (MiniLM 384, CLIP-L 768)
    mlp_ratio: float = 4.0  # GELU-tanh MLP width F = ratio · D in both streams
    qkv_bias: bool = True
    qk_norm: bool = False  # RMSNorm on q and k per head (SD3.5 / REPA option)
    rope: bool = False  # 2-D RoPE on image q/k (text unrotated), on top of the sin-cos table
    pooled_condition: bool = True  # c = emb(t) + MLP(pooled); False is REPA's c = emb(t)
    null_caption: NullCaption = "learned"  # "fixed": set_null_caption(empty-caption features)
    null_length: int = 1  # tokens of the null caption (the encoder's length for "fixed")
    caption_dropout: float = 0.1  # training probability of the null caption (CFG)
    grad_checkpointing: bool = False
    name: str = ""  # registered id this config came from (informational)

    def __post_init__(self) -> None:
        problems = self.grid_problems()
        if min(self.text_dim, self.null_length) < 1:
            problems.append("text_dim and null_length must be ≥ 1")
        if self.null_caption not in ("learned", "fixed"):
            problems.append(f"null_caption {self.null_caption!r} is not 'learned' or 'fixed'")
        if not 0.0 <= self.caption_dropout < 1.0:
            problems.append(f"caption_dropout {self.caption_dropout} is not in [0, 1)")
        if problems:
            raise ConfigError(
                "invalid MMDiT config: " + "; ".join(problems),
                hint="start from a registered variant (repackctl.models.mmdit.MMDIT_FACTORIES)",
            )


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class StreamBlock(nn.Module):
    """One stream's half of a joint block: adaLN-Zero → qkv before attention; proj + MLP after."""

    def __init__(self, cfg: MMDiTConfig, *, pre_only: bool) -> None:
        super().__init__()
        d, self.num_heads = cfg.hidden_size, cfg.num_heads
        self.head_dim = d // cfg.num_heads
        self.pre_only = pre_only
        # adaLN supplies scale and shift, so the norms carry no affine (REPA/SD3 defaults).
        self.norm1 = make_norm("layernorm", d, affine=False)
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        if not pre_only:
            self.proj = nn.Linear(d, d, bias=True)
            self.norm2 = make_norm("layernorm", d, affine=False)
            self.mlp = GeluMlp(d, int(d * cfg.mlp_ratio))
        n_mod = 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, n_mod * d, bias=True))

    def pre_attention(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple]:
        """Queries, keys, values (B, H, N, Dh) of this stream, and the post-attention gates."""
        mod = self.adaLN_modulation(c)  # (B, 6D) or (B, 2D)
        if self.pre_only:
            shift_a, scale_a = mod.chunk(2, dim=1)  # 2 × (B, D)
            rest: tuple = ()
        else:
            shift_a, scale_a, *rest_list = mod.chunk(6, dim=1)  # 6 × (B, D)
            rest = tuple(rest_list)  # gate_a, shift_m, scale_m, gate_m
        b, n, _ = x.shape  # (B, N, D)
        h = modulate(self.norm1(x), shift_a, scale_a)  # (B, N, D)
        qkv = self.qkv(h).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, N, Dh)
        return self.q_norm(q), self.k_norm(k), v, rest  # (B, H, N, Dh) ×3

    def post_attention(self, x: Tensor, attn: Tensor, rest: tuple) -> Tensor:
        """Gated residual updates from the attention output (B, N, D) and the MLP."""
        gate_a, shift_m, scale_m, gate_m = rest  # 4 × (B, D)
        x = x + gate_a.unsqueeze(1) * self.proj(attn)  # (B, N, D)
        h = self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, N, D)
        return x + gate_m.unsqueeze(1) * h  # (B, N, D)


class JointBlock(nn.Module):
    """Text and image streams with separate weights, mixed by one joint attention."""

    def __init__(self, cfg: MMDiTConfig, *, last: bool) -> None:
        super().__init__()
        self.context_block = StreamBlock(cfg, pre_only=last)
        self.x_block = StreamBlock(cfg, pre_only=False)

    def forward(
        self, context: Tensor, x: Tensor, c: Tensor, key_mask: Tensor, rope: Rope2d | None
    ) -> tuple[Tensor, Tensor]:
        """context (B, L, D), x (B, T, D), c (B, D), key_mask (B, 1, 1, L + T) bool."""
        qc, kc, vc, rest_c = self.context_block.pre_attention(context, c)  # (B, H, L, Dh) ×3
        qx, kx, vx, rest_x = self.x_block.pre_attention(x, c)  # (B, H, T, Dh) ×3
        if rope is not None:  # positions exist for image tokens only
            qx, kx = rope(qx), rope(kx)  # (B, H, T, Dh)
        k = torch.cat([kc, kx], dim=2)  # (B, H, L + T, Dh)
        v = torch.cat([vc, vx], dim=2)  # (B, H, L + T, Dh)
        pre_only = self.context_block.pre_only
        q = qx if pre_only else torch.cat([qc, qx], dim=2)  # (B, H, [L +] T, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, [L +] T, Dh)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, [L +] T, D)
        length = 0 if pre_only else context.shape[1]
        x = self.x_block.post_attention(x, out[:, length:], rest_x)  # (B, T, D)
        if not pre_only:
            context = self.context_block.post_attention(context, out[:, :length], rest_c)
        return context, x  # (B, L, D), (B, T, D)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map from D to p·p·C values per image token."""

    def __init__(self, cfg: MMDiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = make_norm("layernorm", d, affine=False)
        self.linear = nn.Linear(d, cfg.patch_size**2 * cfg.in_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p·p·C)


def _pooled_embedder(text_dim: int, d: int) -> nn.Sequential:
    """SD3's vector embedder: pooled text (B, E_t) → (B, D) through a SiLU MLP."""
    return nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), nn.Linear(d, d))


def guidance_active(t: Tensor, t_lo: float, t_hi: float) -> Tensor:
    """(B,) bool: rows inside the guidance interval t_lo ≤ t ≤ t_hi (t = 0 data, 1 noise)."""
    if not 0.0 <= t_lo <= t_hi <= 1.0:
        raise ConfigError(
            f"guidance interval [{t_lo}, {t_hi}] is not inside [0, 1] in increasing order",
            hint="our time: 0 data, 1 noise; their interval start 0.11 is t_hi = 0.89",
        )
    return (t >= t_lo) & (t <= t_hi)  # (B,)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class MMDiT(nn.Module):
    """Text-conditioned velocity-prediction Transformer over a (B, C, h, w) latent."""

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.context_embedder = nn.Linear(cfg.text_dim, d)
        self.t_embedder = TimestepEmbedder(d)
        self.pooled_embedder = _pooled_embedder(cfg.text_dim, d) if cfg.pooled_condition else None
        # Fixed sin-cos table for image tokens: a saved buffer (see DiT for why it is saved).
        pos = sincos_pos_embed_2d(d, cfg.grid_size, cfg.grid_size)  # (T, D)
        self.register_buffer("pos_embed", pos.unsqueeze(0))  # (1, T, D)
        head_dim = d // cfg.num_heads
        self.feat_rope = Rope2d(head_dim, cfg.grid_size, cfg.grid_size) if cfg.rope else None
        self._make_null_caption()
        self.joint_blocks = nn.ModuleList(
            JointBlock(cfg, last=i == cfg.depth - 1) for i in range(cfg.depth)
        )
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def _make_null_caption(self) -> None:
        """Null caption in text-feature space: parameters (learned) or saved buffers (fixed)."""
        cfg = self.config
        tokens = torch.zeros(1, cfg.null_length, cfg.text_dim)  # (1, Ln, E_t)
        pooled = torch.zeros(1, cfg.text_dim)  # (1, E_t)
        # Learned: every null token is real. Fixed: "no text at all" until set_null_caption().
        mask = torch.full((1, cfg.null_length), cfg.null_caption == "learned")  # (1, Ln)
        if cfg.null_caption == "learned":
            self.null_tokens = nn.Parameter(tokens)
            self.null_pooled = nn.Parameter(pooled)
        else:
            self.register_buffer("null_tokens", tokens)
            self.register_buffer("null_pooled", pooled)
        self.register_buffer("null_mask", mask)

    # ----------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """DiT's recipe (also REPA's MMDiT): xavier linears, zero biases, adaLN-Zero."""
        init_linears_and_embedders(self)
        # A learned null caption starts small, like DiT's null-class embedding row.
        if self.config.null_caption == "learned":
            nn.init.normal_(self.null_tokens, std=0.02)
            nn.init.normal_(self.null_pooled, std=0.02)
        # adaLN-Zero in both streams: zero modulation ⇒ every gate is 0 ⇒ each block starts as the
        # identity (DiT §3.2), the reason deep DiTs train stably from scratch.
        streams = [s for b in self.joint_blocks for s in (b.context_block, b.x_block)]
        zero_adaln(self.final_layer, *streams)

    # ----------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Number of learnable parameters (fixed tables and a fixed null are buffers)."""
        return sum(p.numel() for p in self.parameters())

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation recomputation on or off (does not change the weights)."""
        self.config = dataclasses.replace(self.config, grad_checkpointing=enabled)

    @torch.no_grad()
    def uses_every_parameter(self) -> bool:
        """Whether every training forward uses every parameter, so that DDP need not search
        the graph for unused ones after each backward. The last block's text stream has no
        output layers (``pre_only``) and a fixed null caption is buffers, so only a learned
        null caption can be left out: it enters through caption dropout, and its pooled part
        only with ``pooled_condition``."""
        cfg = self.config
        return cfg.null_caption != "learned" or (cfg.caption_dropout > 0 and cfg.pooled_condition)

    def set_null_caption(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> None:
        """Use given features as the null caption, e.g. the encoder's features of ``""``.

        tokens (Ln, E_t) or (1, Ln, E_t), mask (Ln,) or (1, Ln), pooled (E_t,) or (1, E_t), with
        Ln = ``config.null_length``. With a learned null this sets its starting value.
        """
        tokens = tokens.reshape(1, -1, tokens.shape[-1])  # (1, Ln, E_t)
        mask = mask.reshape(1, -1).bool()  # (1, Ln)
        pooled = pooled.reshape(1, -1)  # (1, E_t)
        want = tuple(self.null_tokens.shape)
        if tuple(tokens.shape) != want or mask.shape[1] != want[1] or pooled.shape[1] != want[2]:
            raise ConfigError(
                f"null caption {tuple(tokens.shape)} / {tuple(mask.shape)} / "
                f"{tuple(pooled.shape)} does not fit the model's {want}",
                hint="build the model with null_length = the text encoder's max_length",
            )
        self.null_tokens.copy_(tokens)
        self.null_mask.copy_(mask)
        self.null_pooled.copy_(pooled)

    def caption_drop_mask(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A seedable caption-dropout mask (B,) bool to pass as ``forward(..., drop_mask=)``."""
        device = generator.device if generator is not None else self.pos_embed.device
        u = torch.rand(batch, generator=generator, device=device)  # (B,)
        return u < self.config.caption_dropout  # (B,) bool

    def null_text(self, batch: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """The null caption as a batch of L tokens: tokens (B, L, E_t), mask (B, L), pooled."""
        tokens, mask = self.null_tokens, self.null_mask  # (1, Ln, E_t), (1, Ln)
        n = tokens.shape[1]
        if n > length:
            if bool(mask[:, length:].any()):
                raise ConfigError(
                    f"the null caption has real tokens beyond the text length {length}",
                    hint="pass text features padded to the encoder's max_length",
                )
            tokens, mask = tokens[:, :length], mask[:, :length]  # (1, L, E_t), (1, L)
        elif n < length:
            tokens = F.pad(tokens, (0, 0, 0, length - n))  # (1, L, E_t)
            mask = F.pad(mask, (0, length - n), value=False)  # (1, L)
        e = tokens.shape[-1]
        return (
            tokens.expand(batch, length, e),
            mask.expand(batch, length),
            self.null_pooled.expand(batch, e),
        )

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p·p·C) → (B, C, h, w), inverse of the row-major patch embedding."""
        b = x.shape[0]
        g, p, c = self.config.grid_size, self.config.patch_size, self.config.in_channels
        x = x.reshape(b, g, g, p, p, c)  # (B, h/p, w/p, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h/p, p, w/p, p)
        return x.reshape(b, c, g * p, g * p)  # (B, C, h, w)

    # ----------------------------------------------------------------------------------------
    def _check_inputs(
        self, x: Tensor, t: Tensor, tokens: Tensor, mask: Tensor, pooled: Tensor | None
    ) -> None:
        cfg = self.config
        b = x.shape[0]
        problems = []
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.input_size, cfg.input_size):
            problems.append(f"latent {tuple(x.shape)} is not (B, {cfg.in_channels}, h, w)")
        if t.shape != (b,):
            problems.append(f"t {tuple(t.shape)} is not ({b},)")
        if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[2] != cfg.text_dim:
            problems.append(f"text tokens {tuple(tokens.shape)} are not ({b}, L, {cfg.text_dim})")
        elif tuple(mask.shape) != tuple(tokens.shape[:2]) or mask.dtype != torch.bool:
            problems.append(f"text mask {tuple(mask.shape)} {mask.dtype} is not ({b}, L) bool")
        if cfg.pooled_condition and (pooled is None or tuple(pooled.shape) != (b, cfg.text_dim)):
            shape = None if pooled is None else tuple(pooled.shape)
            problems.append(f"pooled text {shape} is not ({b}, {cfg.text_dim})")
        if problems:
            raise ConfigError(
                f"inputs do not fit model {cfg.name or 'mmdit'}: " + "; ".join(problems),
                hint="build the model with the latent's shape and the text encoder's width",
            )

    def _drop_captions(
        self, tokens: Tensor, mask: Tensor, pooled: Tensor | None, drop: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Replace the rows where ``drop`` (B,) is True by the null caption."""
        b, length, _ = tokens.shape
        n_tokens, n_mask, n_pooled = self.null_text(b, length)  # (B, L, E_t), (B, L), (B, E_t)
        drop = drop.to(device=tokens.device, dtype=torch.bool)  # (B,)
        tokens = torch.where(drop[:, None, None], n_tokens.to(tokens.dtype), tokens)  # (B, L, E_t)
        mask = torch.where(drop[:, None], n_mask, mask)  # (B, L)
        if pooled is not None:
            pooled = torch.where(drop[:, None], n_pooled.to(pooled.dtype), pooled)  # (B, E_t)
        return tokens, mask, pooled

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
        text_pooled: Tensor | None,
        return_hidden_at: int | None = None,
        drop_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocity at (x, t) given a caption's features.

        x: (B, C, h, w) noisy latent; t: (B,) or scalar in [0, 1] (0 data, 1 noise);
        text_tokens (B, L, E_t), text_mask (B, L) bool (True = real token), text_pooled (B, E_t)
        (may be None when ``pooled_condition`` is off). ``drop_mask`` (B,) bool replaces captions
        by the null caption; without it, training mode drops them with probability
        ``caption_dropout`` (pass ``caption_drop_mask(B, generator)`` to seed it).
        ``return_hidden_at=k`` also returns the image tokens after block k (1-based) for REPA.
        """
        cfg = self.config
        if t.ndim == 0:
            t = t.expand(x.shape[0])  # (B,)
        self._check_inputs(x, t, text_tokens, text_mask, text_pooled)
        if return_hidden_at is not None and not 1 <= return_hidden_at <= cfg.depth:
            raise ConfigError(
                f"return_hidden_at={return_hidden_at} is outside the model's 1..{cfg.depth} blocks",
                hint="use repackctl.models.mmdit.mmdit_repa_depth(depth)",
            )
        if drop_mask is None and self.training and cfg.caption_dropout > 0:
            drop_mask = self.caption_drop_mask(x.shape[0]).to(x.device)  # (B,)
        if drop_mask is not None:
            text_tokens, text_mask, text_pooled = self._drop_captions(
                text_tokens, text_mask, text_pooled, drop_mask
            )
        # Padded content never enters the network (even NaN), and padded keys are masked below.
        text_tokens = torch.where(text_mask[..., None], text_tokens, 0.0)  # (B, L, E_t)
        context = self.context_embedder(text_tokens.to(x.dtype))  # (B, L, D)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        c = self.t_embedder(t)  # (B, D)
        if self.pooled_embedder is not None:
            c = c + self.pooled_embedder(text_pooled.to(c.dtype))  # (B, D)
        image_keys = text_mask.new_ones(x.shape[0], h.shape[1])  # (B, T) bool
        key_mask = torch.cat([text_mask, image_keys], dim=1)[:, None, None, :]  # (B, 1, 1, L + T)
        hidden = None
        use_ckpt = cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.joint_blocks, start=1):
            args = (context, h, c, key_mask, self.feat_rope)
            if use_ckpt:
                context, h = checkpoint(block, *args, use_reentrant=False)  # (B, L, D), (B, T, D)
            else:
                context, h = block(*args)  # (B, L, D), (B, T, D)
            if i == return_hidden_at:
                hidden = h  # (B, T, D)
        v = self.unpatchify(self.final_layer(h, c))  # (B, C, h, w)
        if return_hidden_at is not None:
            return v, hidden  # (B, C, h, w), (B, T, D)
        return v

    # ----------------------------------------------------------------------------------------
    def forward_with_cfg(
        self,
        x: Tensor,
        t: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
        text_pooled: Tensor | None,
        scale: float,
        t_lo: float = 0.0,
        t_hi: float = 1.0,
    ) -> Tensor:
        """Classifier-free guidance v_u + s·(v_c − v_u) with the null caption as v_u.

        Conditional and null rows go through ONE forward of 2B rows. Rows outside
        t_lo ≤ t ≤ t_hi get the conditional velocity; when no row is inside (or s = 1) only the
        B conditional rows are evaluated. No caption is dropped at random, even in train mode.
        """
        b = x.shape[0]
        if t.ndim == 0:
            t = t.expand(b)  # (B,)
        active = guidance_active(t, t_lo, t_hi)  # (B,)
        keep = torch.zeros(b, dtype=torch.bool, device=x.device)  # (B,)
        if scale == 1.0 or not bool(active.any()):
            return self.forward(x, t, text_tokens, text_mask, text_pooled, drop_mask=keep)
        pooled2 = None if text_pooled is None else torch.cat([text_pooled, text_pooled])
        both = self.forward(
            torch.cat([x, x]),  # (2B, C, h, w)
            torch.cat([t, t]),  # (2B,)
            torch.cat([text_tokens, text_tokens]),  # (2B, L, E_t)
            torch.cat([text_mask, text_mask]),  # (2B, L)
            pooled2,  # (2B, E_t)
            drop_mask=torch.cat([keep, ~keep]),  # (2B,): second half is the null caption
        )
        cond, uncond = both[:b], both[b:]  # 2 × (B, C, h, w)
        guided = uncond + scale * (cond - uncond)  # (B, C, h, w)
        return torch.where(active[:, None, None, None], guided, cond)  # (B, C, h, w)

    def velocity_fn(
        self,
        text_tokens: Tensor,
        text_mask: Tensor,
        text_pooled: Tensor | None,
        *,
        scale: float = 1.0,
        t_lo: float = 0.0,
        t_hi: float = 1.0,
    ) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        """A ``transport.samplers.VelocityFn`` ``f(x, t, y)`` for these captions (y ignored)."""

        def f(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            return self.forward_with_cfg(
                x, t, text_tokens, text_mask, text_pooled, scale, t_lo=t_lo, t_hi=t_hi
            )

        return f


# --------------------------------------------------------------------------------------------
# Sizes and registered variants
# --------------------------------------------------------------------------------------------

#: SD3/REPA rule: width = 64 · depth and heads = depth (head dim 64). Depths are chosen so the
#: widths equal the DiT table's (variants.SIZES: S 384, B 768, L 1024, XL 1152), which keeps the
#: REPA projector and the compute per token comparable across families. REPA's own
#: text-to-image model is ``mmdit-repa-2`` (``MMDIT_REPA``, below).
MMDIT_SIZES: dict[str, SizePreset] = {
    "s": SizePreset(depth=6, hidden_size=384, num_heads=6),
    "b": SizePreset(depth=12, hidden_size=768, num_heads=12),
    "l": SizePreset(depth=16, hidden_size=1024, num_heads=16),
    "xl": SizePreset(depth=18, hidden_size=1152, num_heads=18),
}
MMDIT_TINY = SizePreset(depth=2, hidden_size=64, num_heads=2)  # test model, patch 1
#: REPA's text-to-image MMDiT (sihyun-yu/REPA models/mmdit.py, MMDiT.__init__): depth 24 and
#: ``hidden_size = 32 * depth`` (768; its ``64 * depth`` line is commented out), ``num_heads =
#: depth`` (head dim 32), patch 2, mlp ratio 4, qkv bias, no qk-norm, c = emb(t) (no pooled
#: text: ``adm_in_channels`` None): 505,070,608 parameters at its 4×32×32 latent and 768-wide CLIP
#: text, the same as ``mmdit-repa-2`` (REPA's projector is ours apart: ``models.repa``)
MMDIT_REPA = SizePreset(depth=24, hidden_size=768, num_heads=24)
MMDIT_PATCHES: tuple[int, ...] = (1, 2)
REPA_T2I_DEPTH, REPA_T2I_LAYER = 24, 8  # REPA aligns after block 8 of its 24-block MMDiT


def mmdit_repa_depth(depth: int) -> int:
    """Block after which to align: 8 for 24 blocks, scaled proportionally, at least 1."""
    return max(1, min(depth, round(depth * REPA_T2I_LAYER / REPA_T2I_DEPTH)))


def mmdit_config(
    size: SizePreset,
    patch: int,
    *,
    name: str,
    in_channels: int = 32,
    input_size: int = 16,
    text_dim: int = 384,
    **options: Any,
) -> MMDiTConfig:
    """Config of one variant; ``options`` are any other ``MMDiTConfig`` fields."""
    known = {f.name for f in dataclasses.fields(MMDiTConfig)}
    fixed = {"patch_size", "depth", "hidden_size", "num_heads", "name"}
    unknown = sorted(set(options) - (known - fixed))
    if unknown:
        raise ConfigError(
            f"unknown MMDiT options: {', '.join(unknown)}",
            hint="options: " + ", ".join(sorted(known - fixed)),
        )
    return MMDiTConfig(
        in_channels=in_channels,
        input_size=input_size,
        **size.fields(patch),
        text_dim=text_dim,
        name=name,
        **options,
    )


def _build(
    preset: SizePreset, patch: int, name: str, in_channels: int, input_size: int, **options: Any
) -> MMDiT:
    return MMDiT(
        mmdit_config(
            preset, patch, name=name, in_channels=in_channels, input_size=input_size, **options
        )
    )


def _factory(
    preset: SizePreset,
    patch: int,
    name: str,
    *,
    channels: int = 32,
    side: int = 16,
    text: int = 384,
    pooled: bool = True,
) -> Callable[..., MMDiT]:
    """A registered factory; ``channels``/``side``/``text`` are its default latent and text width,
    ``pooled`` its default ``pooled_condition``."""

    # Explicit keywords (no **kwargs): the class-conditional training path, which passes
    # num_classes, then fails with a clear "does not take num_classes" (train.dit.build_model).
    def factory(
        *,
        in_channels: int = channels,
        input_size: int = side,
        text_dim: int = text,
        qk_norm: bool = False,
        rope: bool = False,
        pooled_condition: bool = pooled,
        null_caption: NullCaption = "learned",
        null_length: int = 1,
        caption_dropout: float = 0.1,
        grad_checkpointing: bool = False,
        depth: int | None = None,
        width: int | None = None,
        heads: int | None = None,
    ) -> MMDiT:
        size, suffix = shaped(preset, depth, width, heads)  # custom small models
        options = dict(
            text_dim=text_dim,
            qk_norm=qk_norm,
            rope=rope,
            pooled_condition=pooled_condition,
            null_caption=null_caption,
            null_length=null_length,
            caption_dropout=caption_dropout,
            grad_checkpointing=grad_checkpointing,
        )
        return _build(size, patch, name + suffix, in_channels, input_size, **options)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = (
        f"MMDiT {name}: {preset.depth} joint blocks, width {preset.hidden_size}, "
        f"{preset.num_heads} heads, patch {patch}. Defaults: a {channels}-channel {side}×{side} "
        f"latent and {text}-wide text features{'' if pooled else ', c = emb(t) (no pooled text)'}; "
        "depth / width / heads override the size's "
        "(custom small models); options: MMDiTConfig fields."
    )
    return factory


mmdit_s_1 = _factory(MMDIT_SIZES["s"], 1, "mmdit-s-1")
mmdit_s_2 = _factory(MMDIT_SIZES["s"], 2, "mmdit-s-2")
mmdit_b_1 = _factory(MMDIT_SIZES["b"], 1, "mmdit-b-1")
mmdit_b_2 = _factory(MMDIT_SIZES["b"], 2, "mmdit-b-2")
mmdit_l_1 = _factory(MMDIT_SIZES["l"], 1, "mmdit-l-1")
mmdit_l_2 = _factory(MMDIT_SIZES["l"], 2, "mmdit-l-2")
mmdit_xl_1 = _factory(MMDIT_SIZES["xl"], 1, "mmdit-xl-1")
mmdit_xl_2 = _factory(MMDIT_SIZES["xl"], 2, "mmdit-xl-2")
# REPA's text-to-image model at its defaults: SD-VAE 4×32×32 latents, CLIP-L text (768), c = emb(t)
mmdit_repa_2 = _factory(MMDIT_REPA, 2, "mmdit-repa-2", channels=4, side=32, text=768, pooled=False)
# the test model: 2 joint blocks, width 64, 2 heads, patch 1 (a CPU second)
mmdit_tiny = _factory(MMDIT_TINY, 1, "mmdit-tiny", channels=4, side=8, text=32)


MMDIT_FACTORIES: dict[str, Callable[..., MMDiT]] = {
    **{f"mmdit-{s}-{p}": globals()[f"mmdit_{s}_{p}"] for s in MMDIT_SIZES for p in MMDIT_PATCHES},
    "mmdit-repa-2": mmdit_repa_2,
    "mmdit-tiny": mmdit_tiny,
}


def build_mmdit_from_config(config: MMDiTConfig | dict) -> MMDiT:
    """Rebuild a model from its saved ``config.to_dict()`` (e.g. a checkpoint's JSON)."""
    cfg = config if isinstance(config, MMDiTConfig) else MMDiTConfig.from_dict(config)
    return MMDiT(cfg)
