"""`uvit-tiny`: a DiT with U-ViT long skip connections, registered under ``repackctl.models``.

U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models") joins each
shallow block's output to the input of its mirror-image deep block: with ``depth = 2k`` blocks,
block ``k + j`` (j = 1..k) takes ``Linear([h, skip_{k+1-j}])`` (2D → D) instead of ``h``. The
long skips carry low-level detail past the middle of the network. Everything else (patch
embedding, adaLN-Zero blocks, RoPE, final layer, REPA hidden state) is repackctl's LightningDiT,
so the model trains with `repackctl train dit --model uvit-tiny` like any registered variant.

Shapes: B batch, C latent channels, T tokens, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from repackctl.errors import ConfigError
from repackctl.models.dit import DiT, DiTConfig
from repackctl.models.variants import SizePreset, variant_config

UVIT_TINY = SizePreset(depth=4, hidden_size=64, num_heads=2)


class UViTDiT(DiT):
    """DiT whose deep half receives the shallow half's outputs through long skips."""

    def __init__(self, config: DiTConfig) -> None:
        if config.depth % 2:
            raise ConfigError(
                f"U-ViT needs an even depth, got {config.depth}", "use depth 2k (e.g. 4)"
            )
        super().__init__(config)
        d = config.hidden_size
        self.skip_linears = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(config.depth // 2))
        self._init_skips()

    def _init_skips(self) -> None:
        # Start as "take h, ignore the skip" (identity on the first half, zero on the second):
        # with adaLN-Zero blocks the whole network is then still the identity at init.
        d = self.config.hidden_size
        for lin in self.skip_linears:
            with torch.no_grad():
                lin.weight.zero_()
                lin.weight[:, :d].copy_(torch.eye(d))
                lin.bias.zero_()

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        return_hidden_at: int | None = None,
        drop_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocity at (x, t) for labels y; same contract as ``DiT.forward``."""
        h, c = self.embed(x, t, y, return_hidden_at, drop_mask)  # (B, T, D), (B, D)
        cfg = self.config
        half = cfg.depth // 2
        skips: list[Tensor] = []
        hidden = None
        for i, block in enumerate(self.blocks, start=1):
            if i > half:
                skip = skips.pop()  # (B, T, D) output of block depth + 1 − i
                h = self.skip_linears[i - half - 1](torch.cat([h, skip], dim=-1))  # (B, T, D)
            h = block(h, c, self.feat_rope)  # (B, T, D)
            if i <= half:
                skips.append(h)
            if i == return_hidden_at:
                hidden = h  # (B, T, D)
        v = self.unpatchify(self.final_layer(h, c))  # (B, C, h, w)
        if return_hidden_at is not None:
            return v, hidden  # (B, C, h, w), (B, T, D)
        return v


def uvit_tiny(
    *,
    in_channels: int = 4,
    input_size: int = 8,
    num_classes: int = 10,
    qk_norm: bool = False,
    no_shift: bool = False,
    grad_checkpointing: bool = False,
    class_dropout: float = 0.1,
) -> UViTDiT:
    """U-ViT-style LightningDiT: 4 blocks, width 64, 2 heads, patch 1, two long skips."""
    cfg = variant_config(
        "lightningdit",
        UVIT_TINY,
        1,
        name="uvit-tiny",
        in_channels=in_channels,
        input_size=input_size,
        num_classes=num_classes,
        qk_norm=qk_norm,
        no_shift=no_shift,
        grad_checkpointing=grad_checkpointing,
        class_dropout=class_dropout,
    )
    return UViTDiT(cfg)
