"""The repack projection's form (``pack.projection_form``): ``paper`` builds the official one
(guanfangdong/RePack-then-Refine ``stage1/repack/models/autoencoder.py``: ``encoder.conv_out``
(2d, C, 1, 1) without bias, ``quant_conv`` (2d, 2d, 1, 1) + bias, ``post_quant_conv`` (d, d, 1, 1)
+ bias before the decoder, PyTorch's default init), ``small`` keeps the folded one (one affine map,
as every run before the setting); a run recorded before the setting resumes and loads folded,
and a resume that asks for the other form is refused. Real components: a patchpix cache at 32 px,
the CLI, real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from support.caches import patchpix_fixtures
from support.ckpt_state import as_recorded_before
from support.ckpt_state import run_state as _state
from support.cli import cli_ok, cli_refused
from support.official import official_stage1

from repackctl.errors import CheckpointError, ResumeConflict
from repackctl.pack.projection import ProjectionConfig, build_projection
from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny decoder under the paper preset: 4×4 grid → 32 px, d = 4, 8 channels, attention at 16
TINY = [
    *("--preset", "paper", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--disc-channels", "8", "--batch-size", "8"),
    *("--log-every", "1", "--image-every", "0", "--ckpt-every", "2"),
]
IMAGES = 16


# a patchpix cache of IMAGES built-in train images at 32 px, and a private copy per test
base_cache, cache = patchpix_fixtures("form-cache", IMAGES)


def _plan(cache: Path, preset: str):
    from repackctl.pack.data import locate_features
    from repackctl.pack.task import resolve_plan

    flags = {"pack.preset": preset, "pack.encoder": "patchpix", "pack.resolution": 32}
    settings = resolve_settings(None, {**flags, "cache": str(cache)}, environ={}).settings
    return resolve_plan(settings, locate_features(settings))


def test_paper_plans_the_official_form_and_small_the_folded_one(cache):
    from repackctl.pack.autoencoder import PackAutoencoder

    r = resolve_settings(None, {"pack.preset": "paper", "pack.encoder": "dinov3"}, environ={})
    assert r.settings.pack.projection_form == "official"
    assert r.sources["pack.projection_form"] == "preset paper"

    paper = _plan(cache, "paper").autoencoder
    assert paper.projection.form == "official" and paper.decoder.post_quant_conv
    keys = set(PackAutoencoder.from_config(paper).state_dict())
    assert {"projection.conv_out.weight", "projection.quant_conv.weight"} <= keys
    assert {"projection.quant_conv.bias", "decoder.post_quant_conv.weight"} <= keys
    assert "projection.conv_out.bias" not in keys and "projection.proj.weight" not in keys

    small = _plan(cache, "small").autoencoder
    assert small.projection.form == "folded" and not small.decoder.post_quant_conv
    # the folded model is the one every run before the setting built: same keys, same numbers
    before = small.to_dict()
    del before["projection"]["form"]
    torch.manual_seed(0)
    now = PackAutoencoder.from_config(small).state_dict()
    torch.manual_seed(0)
    old = PackAutoencoder.from_dict(json.loads(json.dumps(before))).state_dict()
    assert set(now) == set(old) and all(torch.equal(now[k], old[k]) for k in now)
    assert {k for k in now if k.startswith("projection.")} == {
        "projection.proj.weight",
        "projection.proj.bias",
        "projection.token_mean",
        "projection.token_whitening",
        "projection.whitening_fitted",
    }
    assert not [k for k in now if "post_quant_conv" in k]


def test_official_form_has_the_official_layout_init_and_computation():
    torch.manual_seed(3)
    proj = build_projection(ProjectionConfig("repack", 10, 3, form="official"))
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {
        "conv_out.weight": (6, 10, 1, 1),
        "quant_conv.weight": (6, 6, 1, 1),
        "quant_conv.bias": (6,),
    }
    # PyTorch's default Conv2d init, drawn in the official order (conv_out, then quant_conv)
    torch.manual_seed(3)
    conv_out, quant_conv = torch.nn.Conv2d(10, 6, 1, bias=False), torch.nn.Conv2d(6, 6, 1)
    assert torch.equal(proj.conv_out.weight, conv_out.weight)
    assert torch.equal(proj.quant_conv.weight, quant_conv.weight)
    assert torch.equal(proj.quant_conv.bias, quant_conv.bias)
    x = torch.randn(2, 10, 4, 4)  # (B, C, h, w)
    theirs = quant_conv(conv_out(x))  # (B, 2d, h, w)
    post = proj.encode(x)
    torch.testing.assert_close(post.mean, theirs[:, :3])
    torch.testing.assert_close(post.logvar, theirs[:, 3:].clamp(-30, 20))

    # whitening works with the official form: the convs act on the whitened tokens
    white = build_projection(ProjectionConfig("repack", 10, 3, whiten=True, form="official"))
    mean, matrix = torch.randn(10), torch.randn(10, 10)
    white.set_whitening(mean, matrix)
    xw = ((x.permute(0, 2, 3, 1) - mean) @ matrix).permute(0, 3, 1, 2)  # (B, C, h, w)
    expected = F.conv2d(F.conv2d(xw, white.conv_out.weight), white.quant_conv.weight)
    expected = expected + white.quant_conv.bias[:, None, None]
    torch.testing.assert_close(white.encode(x).mean, expected[:, :3], atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="unknown projection form"):
        ProjectionConfig("repack", 10, 3, form="fused")


def test_official_import_builds_the_official_form_exactly():
    from repackctl.convert.official import map_stage1
    from repackctl.pack.autoencoder import PackAutoencoder

    sd = official_stage1()
    ours, config, _ = map_stage1(sd, image_size=16)
    assert config.projection.form == "official" and config.decoder.post_quant_conv
    for theirs, mine in (
        ("encoder.conv_out.weight", "projection.conv_out.weight"),
        ("quant_conv.weight", "projection.quant_conv.weight"),
        ("quant_conv.bias", "projection.quant_conv.bias"),
    ):
        assert torch.equal(ours[mine], sd[theirs]), mine  # copied, not folded
    model = PackAutoencoder.from_config(config)
    model.load_state_dict(ours)
    x = torch.randn(2, 16, 2, 2)  # (B, C, h, w)
    official = F.conv2d(F.conv2d(x, sd["encoder.conv_out.weight"]), sd["quant_conv.weight"])
    official = official + sd["quant_conv.bias"][:, None, None]
    torch.testing.assert_close(model.encode(x).mean, official[:, :4], atol=1e-5, rtol=1e-5)


def test_tiny_paper_run_trains_resumes_and_loads_in_the_official_form(cache, tmp_path):
    from repackctl.pack.load import load_pack

    cli_ok("pack", "train", *TINY, "--whiten", "--steps", "2", "--name", "off")
    ckpt, state = _state(tmp_path, "off")
    config = state["extra"]["autoencoder_config"]
    assert config["projection"]["form"] == "official" and config["decoder"]["post_quant_conv"]
    assert state["extra"]["plan"]["autoencoder"]["projection"]["form"] == "official"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert weights["projection.conv_out.weight"].shape[:1] == (8,)
    assert weights["projection.quant_conv.weight"].shape == (8, 8, 1, 1)
    assert weights["decoder.post_quant_conv.weight"].shape == (4, 4, 1, 1)

    cli_ok("pack", "train", *TINY, "--whiten", "--steps", "4", "--name", "off")
    ckpt, state = _state(tmp_path, "off")
    assert state["step"] == 4
    handle = load_pack(ckpt)
    assert handle.model.projection.form == "official"
    assert handle.model.decoder.post_quant_conv is not None
    # a resume that asks for the other form is refused, naming the setting
    args = ("pack", "train", *TINY, "--whiten", "--steps", "6", "--name", "off")
    out = cli_refused(ResumeConflict.exit_code, *args, "--projection-form", "folded")
    assert "projection_form" in out and _state(tmp_path, "off")[1]["step"] == 4


def test_a_run_recorded_before_the_setting_resumes_and_loads_folded(cache, tmp_path):
    from repackctl.pack.load import load_pack

    cli_ok("pack", "train", *TINY, "--projection-form", "folded", "--steps", "2", "--name", "old")
    # the run's records as a version before ``pack.projection_form`` wrote them
    as_recorded_before(tmp_path / "runs" / "old", "projection", "form", "projection_form")
    ckpt, state = _state(tmp_path, "old")
    assert "form" not in state["extra"]["autoencoder_config"]["projection"]
    handle = load_pack(ckpt)  # pack encode, refine and sample load it so
    assert handle.model.projection.form == "folded"
    assert handle.model.decoder.post_quant_conv is None

    # asking for the official form on resume is refused with the flag that continues it
    args = ("pack", "train", *TINY, "--steps", "4", "--name", "old")
    out = cli_refused(CheckpointError.exit_code, *args, "--projection-form", "official")
    assert "folded projection form, now official" in out and "--projection-form folded" in out
    assert _state(tmp_path, "old")[0] == ckpt

    # the paper preset (official now) resumes it in the form it trained with, and says so
    out = cli_ok(*args)
    assert "pack.projection_form: kept 'folded'" in out
    ckpt, state = _state(tmp_path, "old")
    assert state["step"] == 4
    assert state["extra"]["autoencoder_config"]["projection"]["form"] == "folded"
    assert not state["extra"]["autoencoder_config"]["decoder"]["post_quant_conv"]
    assert load_pack(ckpt).model.projection.form == "folded"
