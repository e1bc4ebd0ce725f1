"""Training options of a part that is off are refused, not accepted and ignored.

* `train dit` / `train t2i`: `--time-mu` / `--time-sigma` shape the logit-normal time
  distribution only; under `--time-dist uniform` (the repa preset's) they did nothing.
  `--cos-norm-floor` tunes the 1 − cos term only; with `--cos-weight 0` (the repa preset's) it
  did nothing.
* `pack train`: the discriminator's options (`--disc-lr`, `--disc-channels`, `--gan-start`, …)
  with `--gan-weight 0`, which builds no discriminator, were recorded in the plan and ignored.

Each is refused before anything is written, naming the option and what turned its part off;
a preset's value is never refused, and a resumed run whose record holds one resumes. Real CLI
runs on a real patchpix cache.
"""

from __future__ import annotations

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("ignored-options-cache", 16)


def test_logit_normal_and_cosine_options_are_refused_where_unused(tmp_path):
    # refused by the settings check, before any latents are looked for
    out = cli_refused(
        ConfigError.exit_code,
        *("train", "dit", "--preset", "repa", "--size", "tiny", "--time-mu", "0.5"),
        *("--steps", "2", "--name", "d", "--device", "cpu"),
    )
    assert "dit.time_mu = 0.5 (from flag)" in out and "'uniform' (from preset repa)" in out, out
    assert "--time-dist logit_normal" in out
    out = cli_refused(
        ConfigError.exit_code,
        *("train", "t2i", "--time-dist", "uniform", "--time-sigma", "2", "--steps", "2"),
        *("--name", "t", "--device", "cpu"),
    )
    assert "t2i.time_sigma = 2.0 (from flag)" in out, out
    out = cli_refused(
        ConfigError.exit_code,
        *("train", "dit", "--cos-weight", "0", "--cos-norm-floor", "0.1", "--steps", "2"),
        *("--name", "c", "--device", "cpu"),
    )
    assert "dit.cos_norm_floor = 0.1 (from flag)" in out and "dit.cos_weight is 0.0" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


TINY = [
    *("--preset", "small", "--encoder", "patchpix", "--resolution", "32", "-c", "4"),
    *("--ch", "8", "--batch-size", "8", "--log-every", "1", "--image-every", "0"),
    *("--device", "cpu", "--name", "pk"),
]


def test_discriminator_options_without_the_gan_are_refused(cache, tmp_path):
    for option, value in (("--disc-lr", "0.001"), ("--disc-channels", "8"), ("--gan-start", "0")):
        out = cli_refused(
            ConfigError.exit_code,
            *("pack", "train", *TINY, "--gan-weight", "0", option, value, "--steps", "2"),
        )
        name = option[2:].replace("-", "_")
        assert f"pack.{name} = " in out and "pack.gan_weight is 0.0 (from flag)" in out, out
        assert not (tmp_path / "runs" / "pk").exists()
    # without them the run trains, and resumes with its record (gan_weight 0 given again)
    cli_ok("pack", "train", *TINY, "--gan-weight", "0", "--steps", "2")
    cli_ok("pack", "train", *TINY, "--gan-weight", "0", "--steps", "3")
    assert [p.name for p in list_checkpoints(tmp_path / "runs" / "pk")][-1] == "step-0000003"
