"""`repackctl import official`: randomly initialised state dicts with the official key structure
(names and shapes written from guanfangdong/RePack-then-Refine ``stage1/repack/modules/
repack_blocks.py``, ``stage2/models/lightningdit.py``, ``stage3/networks.py``), saved in their
formats, imported, and every tensor checked where it landed; leftovers, pickles, the sampling
translation and the official velocity convention."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.convert.official import map_stage1, map_stage3, refiner_key, safe_load
from repackctl.errors import WeightsError
from repackctl.train.checkpoint import load_weights

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


def test_stage1_and_stage3_mapping_lands_every_tensor() -> None:
    from repackctl.pack.autoencoder import PackAutoencoder
    from repackctl.refine.network import LatentGuidedRefiner

    sd = official_stage1()
    ours, config, report = map_stage1(sd, image_size=16)
    model = PackAutoencoder.from_config(config)
    model.load_state_dict(ours)  # strict: every tensor filled with the right shape
    assert report.dropped and sum(report.dropped.values()) == 4
    # projection: their quant_conv(conv_out(x)) on tokens == our affine map
    x = torch.randn(2, 16, 2, 2)  # (B, C, h, w)
    theirs = torch.nn.functional.conv2d(
        torch.nn.functional.conv2d(x, sd["encoder.conv_out.weight"]),
        sd["quant_conv.weight"],
        sd["quant_conv.bias"],
    )
    post = model.encode(x)
    torch.testing.assert_close(post.mean, theirs[:, :4], atol=1e-4, rtol=1e-4)
    # decoder: up[L-1] (deepest) is our levels[0]; q, k, v stacked into qkv
    assert torch.equal(
        ours["decoder.levels.0.blocks.0.conv1.weight"], sd["decoder.up.1.block.0.conv1.weight"]
    )
    assert torch.equal(
        ours["decoder.levels.1.blocks.0.shortcut.weight"],
        sd["decoder.up.0.block.0.nin_shortcut.weight"],
    )
    assert torch.equal(
        ours["decoder.mid_attn.qkv.weight"],
        torch.cat([sd[f"decoder.mid.attn_1.{n}.weight"] for n in "qkv"]),
    )
    # post_quant_conv kept as its own 1×1 conv: the decoder's first layers are exact everywhere
    z = torch.randn(1, 4, 6, 6)
    a = torch.nn.functional.conv2d(
        torch.nn.functional.conv2d(z, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"]),
        sd["decoder.conv_in.weight"],
        sd["decoder.conv_in.bias"],
        padding=1,
    )
    b = model.decoder.conv_in(model.decoder.post_quant_conv(z))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    rsd = official_refiner()
    rours, rconfig, rreport = map_stage3(rsd, image_size=32)
    LatentGuidedRefiner(rconfig).load_state_dict(rours)
    for key, value in rsd.items():
        if key.startswith("unet."):
            assert torch.equal(rours[refiner_key(key)], value), key
    assert len(rours) == sum(k.startswith("unet.") for k in rsd)
    assert refiner_key("unet.down.2.block.2.proj.weight") == "down.2.2.proj_out.weight"

    sd["decoder.extra_thing.weight"] = _t(2)
    with pytest.raises(WeightsError, match="decoder.extra_thing.weight"):
        map_stage1(sd, image_size=16)


def test_pickled_objects_are_refused_without_trust(tmp_path) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hparams": argparse.Namespace(a=1)}, path)
    with pytest.raises(WeightsError, match="--trust-pickle"):
        safe_load(path)
    assert torch.equal(safe_load(path, trust_pickle=True)["state_dict"]["w"], torch.ones(1))


def test_import_cli_round_trip_and_sampling_defaults(tmp_path) -> None:
    s1, s2, s3 = tmp_path / "s1.ckpt", tmp_path / "dit.pt", tmp_path / "s3.ckpt"
    stage1 = official_stage1(res=32, ch_mult=(1, 2, 2, 2))  # latent 4×4 → 32 px
    torch.save({"state_dict": stage1, "global_step": 7, "epoch": 1}, s1)
    model, ema = official_lightningdit(side=4), official_lightningdit(side=4)
    cfg = {
        "sample": {
            "timestep_shift": 0.3,
            "cfg_interval_start": 0.11,
            "cfg_scale": 15.0,
            "num_sampling_steps": 250,
            "sampling_method": "euler",
        }
    }
    torch.save({"model": model, "ema": ema, "opt": {}, "config": cfg, "global_step": 320000}, s2)
    torch.save({"state_dict": official_refiner(), "global_step": 5}, s3)
    stats = tmp_path / "latents_stats.pt"
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": 2 * torch.ones(1, 4, 1, 1)}, stats)
    runs = tmp_path / "runs"
    r = CliRunner().invoke(
        app,
        [
            "import",
            "official",
            "--stage1",
            str(s1),
            "--dit",
            str(s2),
            "--refiner",
            str(s3),
            "--latent-stats",
            str(stats),
            "--image-size",
            "32",
            "--out",
            "off",
            "--runs",
            str(runs),
        ],
    )
    assert r.exit_code == 0, r.output
    dit_ckpt = runs / "off-dit" / "checkpoints" / "step-0320000"
    for key, value in ema.items():
        assert torch.equal(load_weights(dit_ckpt, "ema")[key], value), key
    state = json.loads((dit_ckpt / "state.json").read_text())["extra"]
    assert state["velocity_convention"] == "official"
    assert state["latent_stats"]["std"] == [2.0] * 4
    defaults = json.loads((runs / "off-dit" / "sampling.json").read_text())["defaults"]
    assert defaults["steps"] == 249 and defaults["cfg_channels"] == 3
    assert defaults["shift"] == pytest.approx(1 / 0.3) and defaults["cfg_t_hi"] == pytest.approx(
        0.89
    )

    # `repackctl sample` picks the defaults up (steps overridden to stay fast), refiner included
    out = tmp_path / "samples"
    r = CliRunner().invoke(
        app,
        [
            "sample",
            "-r",
            "off-dit",
            "-n",
            "2",
            "--steps",
            "3",
            "--refiner",
            "off-refine",
            "--runs",
            str(runs),
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    card = json.loads((out / "protocol.json").read_text())
    assert card["cfg_scale"] == 15.0 and card["cfg_legacy_channels"] == 3
    assert card["shift"] == pytest.approx(1 / 0.3) and card["cfg_interval"][1] == pytest.approx(
        0.89
    )
    assert card["setting_sources"]["steps"] == "setting"
    assert card["setting_sources"]["cfg"] == "sampling.json"
    assert card["velocity_convention"] == "official" and card["refiner"]
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].shape == (2, 32, 32, 3)
    # importing into an existing run is refused
    r = CliRunner().invoke(
        app, ["import", "official", "--stage1", str(s1), "--out", "off", "--runs", str(runs)]
    )
    assert r.exit_code != 0 and "already exists" in r.output
