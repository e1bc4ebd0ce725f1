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
from support.official import _t, official_lightningdit, official_refiner, official_stage1
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.convert.official import map_stage1, map_stage3, refiner_key, safe_load
from repackctl.errors import WeightsError
from repackctl.train.checkpoint import load_weights


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
