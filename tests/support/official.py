"""Randomly initialised state dicts with the official key structure (names and shapes written
from guanfangdong/RePack-then-Refine ``stage1/repack/modules/repack_blocks.py``,
``stage2/models/lightningdit.py``, ``stage3/networks.py``), for the import tests."""

from __future__ import annotations

import torch

G = torch.Generator().manual_seed(0)


def _t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def _conv(sd: dict, name: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    sd[f"{name}.weight"] = _t(cout, cin, k, k)
    if bias:
        sd[f"{name}.bias"] = _t(cout)


def _norm(sd: dict, name: str, c: int) -> None:
    sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + 0.1 * _t(c), 0.1 * _t(c)


def official_stage1(
    c: int = 16, d: int = 4, ch: int = 8, ch_mult=(1, 2), blocks: int = 1, res: int = 16, attn=(8,)
) -> dict[str, torch.Tensor]:
    """RePackAutoencoder.state_dict(): encoder (dino + conv_out), quant convs, taming Decoder."""
    sd: dict[str, torch.Tensor] = {
        "encoder.dino.embeddings.patch_embeddings.weight": _t(c, 3, 4, 4),
        "encoder.dino.layer.0.attention.k_proj.weight": _t(c, c),
        "encoder.conv_out.weight": _t(2 * d, c, 1, 1),
        "loss.losses.lpips_disc_loss.discriminator.main.0.weight": _t(8, 3, 4, 4),
        "loss.losses.watson_distance_loss.w": _t(3),
    }
    _conv(sd, "quant_conv", 2 * d, 2 * d, 1)
    _conv(sd, "post_quant_conv", d, d, 1)
    levels = len(ch_mult)
    block_in = ch * ch_mult[-1]
    size = res // 2 ** (levels - 1)
    _conv(sd, "decoder.conv_in", block_in, d, 3)

    def resblock(name: str, cin: int, cout: int) -> None:
        _norm(sd, f"{name}.norm1", cin)
        _conv(sd, f"{name}.conv1", cout, cin, 3)
        _norm(sd, f"{name}.norm2", cout)
        _conv(sd, f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            _conv(sd, f"{name}.nin_shortcut", cout, cin, 1)

    def attnblock(name: str, cc: int) -> None:
        _norm(sd, f"{name}.norm", cc)
        for n in ("q", "k", "v", "proj_out"):
            _conv(sd, f"{name}.{n}", cc, cc, 1)

    resblock("decoder.mid.block_1", block_in, block_in)
    attnblock("decoder.mid.attn_1", block_in)
    resblock("decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(levels)):
        out = ch * ch_mult[level]
        for i in range(blocks + 1):
            resblock(f"decoder.up.{level}.block.{i}", block_in, out)
            block_in = out
            if size in attn:
                attnblock(f"decoder.up.{level}.attn.{i}", block_in)
        if level != 0:
            _conv(sd, f"decoder.up.{level}.upsample.conv", block_in, block_in, 3)
            size *= 2
    _norm(sd, "decoder.norm_out", block_in)
    _conv(sd, "decoder.conv_out", 3, block_in, 3)
    return sd


def official_lightningdit(
    depth: int = 2, hidden: int = 64, heads: int = 2, c: int = 4, side: int = 8, classes: int = 10
) -> dict[str, torch.Tensor]:
    """LightningDiT (RMSNorm, SwiGLU, RoPE, qkv bias) state dict, patch 1."""
    sd = {
        "pos_embed": _t(1, side * side, hidden),
        "x_embedder.proj.weight": _t(hidden, c, 1, 1),
        "x_embedder.proj.bias": _t(hidden),
        "t_embedder.mlp.0.weight": _t(hidden, 256),
        "t_embedder.mlp.0.bias": _t(hidden),
        "t_embedder.mlp.2.weight": _t(hidden, hidden),
        "t_embedder.mlp.2.bias": _t(hidden),
        "y_embedder.embedding_table.weight": _t(classes + 1, hidden),
        "feat_rope.freqs_cos": _t(side * side, hidden // heads),
        "feat_rope.freqs_sin": _t(side * side, hidden // heads),
        "final_layer.norm_final.weight": _t(hidden),
        "final_layer.linear.weight": 0.01 * _t(c, hidden),
        "final_layer.linear.bias": _t(c),
        "final_layer.adaLN_modulation.1.weight": 0.01 * _t(2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": _t(2 * hidden),
    }
    mlp = int(2 / 3 * hidden * 4)
    for i in range(depth):
        b = f"blocks.{i}"
        sd |= {
            f"{b}.norm1.weight": _t(hidden),
            f"{b}.norm2.weight": _t(hidden),
            f"{b}.attn.qkv.weight": _t(3 * hidden, hidden),
            f"{b}.attn.qkv.bias": _t(3 * hidden),
            f"{b}.attn.proj.weight": _t(hidden, hidden),
            f"{b}.attn.proj.bias": _t(hidden),
            f"{b}.mlp.w12.weight": _t(2 * mlp, hidden),
            f"{b}.mlp.w12.bias": _t(2 * mlp),
            f"{b}.mlp.w3.weight": _t(hidden, mlp),
            f"{b}.mlp.w3.bias": _t(hidden),
            f"{b}.adaLN_modulation.1.weight": 0.01 * _t(6 * hidden, hidden),
            f"{b}.adaLN_modulation.1.bias": _t(6 * hidden),
        }
    return sd


def official_refiner(z: int = 4, b: int = 8) -> dict[str, torch.Tensor]:
    """RePackRefinerTask.state_dict(): unet (RefineUNet), discriminator, perceptual_loss."""
    sd: dict[str, torch.Tensor] = {
        "discriminator.model.0.weight": _t(b, 3, 4, 4),
        "discriminator.model.3.running_mean": _t(2 * b),
        "perceptual_loss.net.slice1.0.weight": _t(8, 3, 3, 3),
    }

    def res(name: str, cin: int, cout: int) -> None:
        _norm(sd, f"unet.{name}.in_layers.0", cin)
        _conv(sd, f"unet.{name}.in_layers.2", cout, cin, 3)
        _norm(sd, f"unet.{name}.out_layers.0", cout)
        _conv(sd, f"unet.{name}.out_layers.2", cout, cout, 3)
        if cin != cout:
            _conv(sd, f"unet.{name}.skip", cout, cin, 1)

    def attn(name: str, c: int) -> None:
        _norm(sd, f"unet.{name}.norm", c)
        _conv(sd, f"unet.{name}.qkv", 3 * c, c, 1)
        _conv(sd, f"unet.{name}.proj", c, c, 1)

    _conv(sd, "unet.conv_in", b, 3 + z, 3)
    widths = [(b, b), (b, 2 * b), (2 * b, 4 * b)]
    for i, (cin, cout) in enumerate(widths):
        res(f"down.{i}.block.0", cin, cout)
        res(f"down.{i}.block.1", cout, cout)
        if i == 2:
            attn(f"down.{i}.block.2", cout)
        _conv(sd, f"unet.down.{i}.downsample", cout, cout, 3)
    res("mid.0", 4 * b, 8 * b)
    attn("mid.1", 8 * b)
    res("mid.2", 8 * b, 4 * b)
    res("up.0.block.0", 8 * b, 4 * b)
    attn("up.0.block.1", 4 * b)
    res("up.1.block.0", 6 * b, 2 * b)
    res("up.1.block.1", 2 * b, 2 * b)
    res("up.2.block.0", 3 * b, b)
    res("up.2.block.1", b, b)
    res("final_res", 2 * b, b)
    _norm(sd, "unet.norm_out", b)
    _conv(sd, "unet.conv_out", 3, b, 3)
    return sd
