"""The decoder's pixel shuffle (``pack.pixel_shuffle``): the conv levels end at 1/s of the image
side and the last conv's 3·s² values per position become s×s pixels. ``paper`` keeps the
official decoder (1), ``small`` takes 4; a run recorded before the setting (a conv decoder up to
the full resolution) resumes and loads as it was trained. Real components: a patchpix cache at
32 px, the CLI, real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.caches import patchpix_fixtures
from support.ckpt_state import as_recorded_before
from support.ckpt_state import run_state as _state
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError, ConfigError
from repackctl.pack.decoder import Decoder, DecoderConfig
from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    *("--preset", "small", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--batch-size", "8", "--gan-weight", "0"),
    *("--log-every", "1", "--image-every", "0", "--ckpt-every", "2"),
]
base_cache, cache = patchpix_fixtures("shuffle-cache", 16)


def _plan(cache: Path, preset: str, **flags):
    from repackctl.pack.data import locate_features
    from repackctl.pack.task import resolve_plan

    given = {"pack.preset": preset, "pack.encoder": "patchpix", "pack.resolution": 32, **flags}
    settings = resolve_settings(None, {**given, "cache": str(cache)}, environ={}).settings
    return resolve_plan(settings, locate_features(settings))


def test_the_decoder_lays_out_pixels_and_skips_the_full_resolution_levels():
    sizes = {"latent_channels": 8, "latent_size": 8, "resolution": 64, "ch": 16}
    plain = DecoderConfig(**sizes, attn_resolutions=())
    shuffled = DecoderConfig(**sizes, attn_resolutions=(), pixel_shuffle=4)
    assert plain.ch_mult == (1, 2, 2, 4) and shuffled.ch_mult == (2, 4)
    assert shuffled.sides == (8, 16)
    torch.manual_seed(0)
    a, b = Decoder(plain), Decoder(shuffled)
    assert sum(p.numel() for p in b.parameters()) < sum(p.numel() for p in a.parameters())
    assert b.conv_out.out_channels == 3 * 16 and b.last_layer is b.conv_out.weight
    z = torch.randn(2, 8, 8, 8)
    assert a(z).shape == b(z).shape == (2, 3, 64, 64)
    # the shuffle places each position's 48 values as its own 4×4 block of pixels
    with torch.no_grad():
        raw = b.conv_out(torch.nn.functional.silu(b.norm_out(_body(b, z))))  # (2, 48, 16, 16)
        out = b(z)
    assert torch.equal(out[:, 1, 4:8, 8:12].reshape(2, 16), raw[:, 16:32, 1, 2])
    # ICNR: a new decoder's 4×4 blocks are flat (no s×s pattern to unlearn)
    assert torch.equal(out, out[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert torch.unique(out[0, 0]).numel() == 16 * 16
    for bad in (3, 16):
        with pytest.raises(ConfigError, match="pixel_shuffle"):
            DecoderConfig(latent_channels=8, latent_size=8, resolution=64, pixel_shuffle=bad)
    assert DecoderConfig.from_dict(shuffled.to_dict()) == shuffled
    old = plain.to_dict()
    del old["pixel_shuffle"]  # a config recorded before the setting: the official decoder
    assert DecoderConfig.from_dict(old) == plain


def _body(decoder: Decoder, z: torch.Tensor) -> torch.Tensor:
    h = decoder.conv_in(z)
    h = decoder.mid_block_2(decoder.mid_attn(decoder.mid_block_1(h)))
    for level in decoder.levels:
        for block in level.blocks:
            h = block(h)
        h = level.upsample(h)
    return h


def test_presets_plan_it_and_a_given_value_wins(cache):
    assert _plan(cache, "paper").autoencoder.decoder.pixel_shuffle == 1
    small = _plan(cache, "small").autoencoder.decoder
    assert small.pixel_shuffle == 4 and small.ch_mult == (2, 4)  # 4×4 grid → 32 px: ×8
    assert _plan(cache, "small", **{"pack.pixel_shuffle": 2}).autoencoder.decoder.pixel_shuffle == 2
    with pytest.raises(ConfigError, match="pixel_shuffle 16"):
        _plan(cache, "small", **{"pack.pixel_shuffle": 16})


def test_a_run_recorded_before_the_setting_resumes_and_loads_as_trained(cache, tmp_path):
    from repackctl.pack.load import load_pack

    cli_ok("pack", "train", *TINY, "--pixel-shuffle", "1", "--steps", "2", "--name", "old")
    # the run's records as a version before ``pack.pixel_shuffle`` wrote them
    as_recorded_before(tmp_path / "runs" / "old", "decoder", "pixel_shuffle", "pixel_shuffle")
    ckpt, state = _state(tmp_path, "old")
    assert "pixel_shuffle" not in state["extra"]["autoencoder_config"]["decoder"]
    assert load_pack(ckpt).model.decoder.config.pixel_shuffle == 1  # pack encode, sample, refine

    args = ("pack", "train", *TINY, "--steps", "4", "--name", "old")
    out = cli_refused(CheckpointError.exit_code, *args, "--pixel-shuffle", "4")
    assert "trained with pack.pixel_shuffle 1, now 4" in out and "--pixel-shuffle 1" in out
    assert _state(tmp_path, "old")[1]["step"] == 2

    out = cli_ok(*args)  # the small preset now gives 4: the run keeps the decoder it trained
    assert "pack.pixel_shuffle: kept 1" in " ".join(out.split())
    ckpt, state = _state(tmp_path, "old")
    assert state["step"] == 4
    assert state["extra"]["autoencoder_config"]["decoder"]["pixel_shuffle"] == 1
