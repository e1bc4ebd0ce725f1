"""Every value a preset recipe depends on, as a user gets it, equals the official code's.

The other preset tests pinned the values a preset sets, mostly against the README table, so a
change made to both passed, and the values a recipe inherits from a field default were pinned by
nothing: ``pack.kl_weight`` 1e-5 in the field, or ``refine.output`` 'residual' in the paper
preset, trained another recipe under ``--preset paper`` with the suite green (audit C, session
36). Each row below states the official value itself, with the file:line it comes from, and is
checked through the settings layer (``resolve_settings``, what every caller gets) and in
``--show-config`` (what the user reads). ``train dit --preset repa`` kept output settings of
its own (a checkpoint every 10000 steps, the last 3 kept, 16-step grids, a log line every 100),
where REPA's ``train.py`` and ``train t2i --preset repa`` save a checkpoint every 50000 steps,
keep them all and draw 50-step grids; it now takes t2i's.

Official code: ``R`` = guanfangdong/RePack-then-Refine at 0d42ab1; ``REPA`` = sihyun-yu/REPA at
67f7145. ``Y`` = R stage1/configs/stage1_repack_dinov3b_f16d32_ffl_watson.yaml, ``C`` = R
stage2/configs/lightningdit_xl_repack_f16d32_dinov3.yaml, ``S`` = R
stage3/configs/refiner_offline.yaml.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support.cli import cli_ok

from repackctl.pack.decoder import DecoderConfig
from repackctl.settings import resolve_settings

# (section, preset, setting, official value); a key no preset sets is its field's default
OFFICIAL: list[tuple[str, str, str, Any]] = [
    # ---- pack paper (RePack stage 1)
    ("pack", "paper", "attn_resolutions", [16]),  # Y:47-48 attn_resolutions [16]
    # derived at the paper's ×16 (16² grid → 256 px, pixel_shuffle 1): Y:40-45 ch_mult 1 1 2 2 4
    ("pack", "paper", "ch_mult", (1, 1, 2, 2, 4)),
    ("pack", "paper", "kl_weight", 1e-6),  # Y:22 kl_weight 1.0e-06 (losses/perceptual.py:124)
    ("pack", "paper", "gan_weight", 0.5),  # Y:21 disc_weight 0.5 (losses/perceptual.py:78)
    # stage1/repack/models/autoencoder.py:155 (autoencoder), :163 (discriminator) Adam betas
    ("pack", "paper", "betas", (0.5, 0.9)),
    ("pack", "paper", "disc_layers", 3),  # losses/perceptual.py:37 disc_num_layers=3 (:63)
    # losses/perceptual.py:93 unweighted |x − x̂| (pixelloss_weight, :36/:56, is never used)
    ("pack", "paper", "l1_weight", 1.0),
    ("pack", "paper", "perceptual_weight", 1.0),  # losses/perceptual.py:41 (used at :96)
    # ---- dit paper (RePack stage 2)
    ("dit", "paper", "qk_norm", False),  # C:17 use_qknorm: false
    ("dit", "paper", "no_shift", False),  # C:21 wo_shift: false
    # ---- refine paper (RePack stage 3)
    ("refine", "paper", "output", "image"),  # stage3/networks.py:145 tanh(conv_out(...))
    ("refine", "paper", "l1_weight", 1.0),  # stage3/train_refiner.py:112 F.l1_loss, :118 × 1
    ("refine", "paper", "perceptual_weight", 1.0),  # S:6 lpips_weight 1.0 (train_refiner:118)
    # stage3/prepare_offline_data.py:75 sample_posterior=False, :92 z = the mean, no noise
    ("refine", "paper", "noise", 0.0),
    # stage3/train_refiner.py:118 total_g_loss = L1 + LPIPS + GAN: no feature term
    ("refine", "paper", "feature_weight", 0.0),
    # ---- dit repa (REPA train.py), as train t2i --preset repa takes train_t2i.py's
    ("dit", "repa", "ckpt_every", 50_000),  # REPA train.py:416 --checkpointing-steps 50000
    ("dit", "repa", "keep_last", 0),  # REPA train.py:328-339 saves each checkpoint, deletes none
    ("dit", "repa", "image_every", 10_000),  # REPA train.py:394 --sampling-steps 10000
    ("dit", "repa", "image_steps", 50),  # REPA train.py:344-348 euler_sampler num_steps=50
    # REPA train.py:371 logs every step to its tracker; our metrics line keeps its default (25),
    # as train t2i --preset repa does (test_the_repa_output_settings_are_t2i_repas)
    ("dit", "repa", "log_every", 25),
]
#: settings whose row is the value the settings derive, not the field's (``None``)
DERIVED = {("pack", "ch_mult")}
#: what train dit --preset repa had before these rows (ckpt 10000, keep 3, log 100, 16 steps)
REPA_BEFORE = {"ckpt_every": 10_000, "keep_last": 3, "log_every": 100, "image_steps": 16}
#: the command line of each (section, preset) and the flags a preset needs beside it
COMMANDS = {
    ("pack", "paper"): ("pack", "train", "--encoder", "dinov3", "--preset", "paper"),
    ("dit", "paper"): ("train", "dit", "--preset", "paper"),
    ("dit", "repa"): ("train", "dit", "--preset", "repa"),
    ("refine", "paper"): ("refine", "train", "--preset", "paper"),
}
#: the output settings of train dit --preset repa that equal train t2i --preset repa's
OUTPUT = ("ckpt_every", "keep_last", "log_every", "image_every", "image_steps")


def _resolved(section: str, preset: str) -> Any:
    """``settings.<section>`` of ``--preset <preset>`` through the settings layer."""
    extra = {"pack.encoder": "dinov3"} if section == "pack" else {}
    flags = {f"{section}.preset": preset, **extra}
    return getattr(resolve_settings(None, flags, environ={}).settings, section)


def _value(section: str, cfg: Any, key: str) -> Any:
    """The value the recipe trains with: the decoder derives an unset ``ch_mult`` from the
    paper's ×16 geometry (a 16² latent grid, 256-px images), as ``pack train`` builds it."""
    if (section, key) == ("pack", "ch_mult"):
        decoder = DecoderConfig(
            latent_size=16, resolution=256, ch_mult=cfg.ch_mult, pixel_shuffle=cfg.pixel_shuffle
        )
        return decoder.ch_mult
    return getattr(cfg, key)


@pytest.mark.parametrize(("section", "preset", "key", "official"), OFFICIAL)
def test_the_preset_resolves_to_the_official_value(section, preset, key, official):
    got = _value(section, _resolved(section, preset), key)
    assert type(got) is type(official) and got == official, (
        f"{section} --preset {preset}: {key} = {got!r}, official {official!r}"
    )
    if preset == "repa" and key in REPA_BEFORE:
        assert REPA_BEFORE[key] != official  # the value it replaced was another one


def _shown(command: tuple[str, ...], section: str) -> dict[str, str]:
    """``KEY → printed value`` of ``COMMAND --show-config`` for ``section`` (whitespace folded)."""
    out = cli_ok(*command, "--show-config")
    pattern = rf"{section}\.(\w+) = (.+?) # (?:flag|default|preset \w+|env \w+)(?= |$)"
    return dict(re.findall(pattern, out))


@pytest.mark.parametrize(("section", "preset"), list(COMMANDS))
def test_show_config_prints_the_official_values(section, preset):
    shown = _shown(COMMANDS[(section, preset)], section)
    rows = [(k, v) for s, p, k, v in OFFICIAL if (s, p) == (section, preset)]
    assert rows
    for key, official in rows:
        if (section, key) in DERIVED:
            continue
        printed = official if not isinstance(official, tuple) else list(official)
        assert shown[key] == repr(printed), (section, preset, key, shown[key])


def test_the_repa_output_settings_are_t2i_repas():
    dit, t2i = _resolved("dit", "repa"), _resolved("t2i", "repa")
    assert {k: getattr(dit, k) for k in OUTPUT} == {k: getattr(t2i, k) for k in OUTPUT}
    resolved = resolve_settings(None, {"dit.preset": "repa"}, environ={})
    for key in ("ckpt_every", "keep_last", "image_every", "image_steps"):
        assert resolved.sources[f"dit.{key}"] == "preset repa", key
