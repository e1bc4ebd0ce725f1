"""Training options that another option's value switches off are refused when the user gave them.

- `train dit` / `train t2i --image-steps N` with `--image-every 0` (no sample grid is ever made)
  and `--ema-warmup` with `--ema-decay 0` (no EMA: nothing to ramp up) were
  accepted, recorded in config.json and ignored; so was `pack train --grid-images N` with
  `--image-every 0`;
- `pack train` / `refine train --perceptual-weight W` (W > 0) without `--lpips-weights` trained
  without the term after a warning, and `--lpips-weights F` with `--perceptual-weight 0` loaded
  nothing; the same for pack's `--watson-weight` / `--watson-weights` (the small preset's Watson
  weight is 0, so `--watson-weights F` alone was dropped).

Each refusal names both settings with their sources; a preset's or a default value is never
refused (the paper preset's perceptual and Watson weights without files stay warnings). Real CLI
(Typer's runner): the refusals come from the settings layer, before any data is looked for."""

from __future__ import annotations

from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError

DIT = ("train", "dit", "--steps", "2", "-b", "8", "--device", "cpu", "--name", "d")
PACK = ("pack", "train", "-e", "patchpix", "--resolution", "32", "--show-config")


def test_grid_and_ema_options_switched_off_are_refused_by_train_dit_and_t2i(tmp_path):
    out = cli_refused(ConfigError.exit_code, *DIT, "--image-every", "0", "--image-steps", "4")
    assert "dit.image_steps = 4 (from flag)" in out and "dit.image_every is 0 (from flag)" in out
    assert "--image-every N with N >= 1" in out and "drop --image-steps" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    out = cli_refused(ConfigError.exit_code, *DIT, "--ema-decay", "0", "--ema-warmup")
    assert "dit.ema_warmup = True (from flag)" in out and "dit.ema_decay is 0.0 (from flag)" in out
    assert "--ema-decay D with 0 < D < 1" in out and "drop --ema-warmup" in out, out
    # a warm-up switched off with no EMA asks for what is so: accepted
    cli_ok("train", "dit", "--ema-decay", "0", "--no-ema-warmup", "--show-config")
    t2i = ("train", "t2i", "--show-config")
    out = cli_refused(ConfigError.exit_code, *t2i, "--ema-decay", "0", "--ema-warmup")
    assert "t2i.ema_warmup = True (from flag)" in out and "drop --ema-warmup" in out, out
    out = cli_refused(ConfigError.exit_code, *t2i, "--image-every", "0", "--image-steps", "2")
    assert "t2i.image_steps = 2 (from flag)" in out, out


def test_values_not_given_are_kept_and_other_sources_are_named(monkeypatch):
    # each switch alone, and a preset's ema_warmup (paper: False) under --ema-decay 0
    cli_ok("train", "dit", "--image-every", "0", "--ema-decay", "0", "--show-config")
    cli_ok("train", "dit", "--preset", "paper", "--ema-decay", "0", "--show-config")
    cli_ok("train", "dit", "--image-steps", "4", "--no-ema-warmup", "--show-config")
    monkeypatch.setenv("REPACKCTL_DIT__EMA_WARMUP", "true")
    out = cli_refused(ConfigError.exit_code, "train", "dit", "--ema-decay", "0", "--show-config")
    assert (
        "(from env REPACKCTL_DIT__EMA_WARMUP)" in out and "unset REPACKCTL_DIT__EMA_WARMUP" in out
    )


def test_pack_recon_grid_and_file_terms_switched_off_are_refused():
    out = cli_refused(ConfigError.exit_code, *PACK, "--image-every", "0", "--grid-images", "3")
    assert "pack.grid_images = 3 (from flag)" in out and "pack.image_every is 0" in out, out
    out = cli_refused(ConfigError.exit_code, *PACK, "--perceptual-weight", "2")
    assert "pack.perceptual_weight = 2.0 (from flag)" in out, out
    assert "pack.lpips_weights is not set" in out and "pass --lpips-weights with" in out, out
    out = cli_refused(
        ConfigError.exit_code, *PACK, "--lpips-weights", "l.pth", "--perceptual-weight", "0"
    )
    assert "pack.lpips_weights = 'l.pth' (from flag)" in out and "drop --lpips-weights" in out
    # the small preset's Watson weight is 0: the parameters file alone was dropped
    out = cli_refused(ConfigError.exit_code, *PACK, "--watson-weights", "w.pth")
    assert "pack.watson_weight is 0.0 (from preset small)" in out, out
    out = cli_refused(ConfigError.exit_code, *PACK, "--watson-weight", "0.01")
    assert "pack.watson_weights is not set" in out and "rgb_watson_fft_trial0.pth" in out, out
    # a preset's / the default weight without its file stays a warning (offline machines)
    shown = cli_ok(*PACK, "--preset", "paper")
    assert "pack.watson_weight = 0.005 # preset paper" in shown
    assert "pack.perceptual_weight = 1.0 # default" in shown
    cli_ok(*PACK, "--perceptual-weight", "0", "--image-every", "0")


def test_refine_perceptual_weight_without_lpips_weights_is_refused(tmp_path):
    refine = ("refine", "train", "--name", "r", "--device", "cpu")
    out = cli_refused(ConfigError.exit_code, *refine, "--perceptual-weight", "2")
    assert "refine.perceptual_weight = 2.0 (from flag)" in out, out
    assert "refine.lpips_weights is not set" in out, out
    out = cli_refused(ConfigError.exit_code, *refine, "--perceptual-weight", "0",
                      "--lpips-weights", "l.pth")  # fmt: skip
    assert "refine.lpips_weights = 'l.pth' (from flag)" in out, out
    assert not (tmp_path / "runs" / "r").exists()
