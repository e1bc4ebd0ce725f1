"""`refine train`: the discriminator's options without the GAN are refused; a PatchGAN too
deep for the images is an Error before anything is written.

* `--gan-weight 0 --disc-channels N` (or `--disc-norm`) was accepted, recorded and ignored (no
  discriminator is built), as `pack train` did before it refused the same. A preset's value is
  never refused. `repackctl demo` passed exactly that combination: it now passes the width only
  with the GAN on (its plan, hence plan.json, is unchanged; tests/test_demo.py runs it).
* On 16 px images (the refiner takes any side divisible by 8) its 3-layer PatchGAN halved the
  side to 2 px and training stopped with a PyTorch traceback at the first step, after the
  triplets were built.
Real CLI runs; the 16 px images are a real image folder through the patchpix encoder.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

REFINE = ["refine", "train", "--name", "r", "--steps", "1", "--device", "cpu"]


def test_discriminator_options_without_the_gan_are_refused(tmp_path):
    for option, value in (("--disc-channels", "8"), ("--disc-norm", "batch")):
        name = option[2:].replace("-", "_")
        for show in (["--show-config"], []):  # the values it would train with, and a start
            args = [*REFINE, "--gan-weight", "0", option, value, *show]
            out = cli_refused(ConfigError.exit_code, *args)
            assert f"refine.{name} = " in out and "refine.gan_weight is 0.0 (from flag)" in out
            assert "it would be ignored" in out and f"drop {option}" in out, out
    # the paper preset's disc_norm (batch) is its value, not the user's: shown, not refused
    out = cli_ok(*REFINE, "--preset", "paper", "--gan-weight", "0", "--show-config")
    assert "refine.disc_norm" in out and "preset paper" in out, out
    assert not (tmp_path / "runs").exists()


def test_the_demo_passes_the_discriminator_width_only_with_the_gan(tmp_path):
    from repackctl.demo import DemoPlan, _Demo
    from repackctl.progress import null_progress

    for plan in (DemoPlan(out=tmp_path / "demo"), DemoPlan.quick(tmp_path / "demo")):
        assert plan.refine_gan_weight == 0
        args = _Demo(plan, null_progress, lambda _: None).refine_command()
        assert "--disc-channels" not in args
        cli_ok(*args, "--show-config")  # the settings checks accept the demo's command
        gan = DemoPlan(out=plan.out, refine_gan_weight=0.5, refine_channels=12)
        args = _Demo(gan, null_progress, lambda _: None).refine_command()
        assert args[args.index("--disc-channels") + 1] == "12"


def _folder_of_16px_images(root) -> str:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return f"imagefolder:{root}"


def test_a_patchgan_too_deep_for_the_images_is_refused_up_front(tmp_path):
    data = _folder_of_16px_images(tmp_path / "images")
    src = ["--data", data, "--encoder", "patchpix", "--resolution", "16"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "8", "--num-workers", "0")
    cli_ok(
        *("pack", "train", *src, "--preset", "small", "-c", "4", "--ch", "8", "--name", "p16"),
        *("--batch-size", "8", "--image-every", "0", "--gan-weight", "0", "--steps", "1"),
        *("--device", "cpu"),
    )
    tiny = [*REFINE, "--pack-run", "p16", "--batch-size", "4", "--base-channels", "8"]
    out = cli_refused(ConfigError.exit_code, *tiny)
    assert "PatchGAN depth (n_layers) 3 is too deep for 16 px images" in out, out
    assert "--gan-weight 0" in out and "24 px or more" in out, out
    assert not (tmp_path / "runs" / "r").exists()
    cli_ok(*tiny, "--gan-weight", "0")  # without the GAN it trains
    assert (tmp_path / "runs" / "r" / "checkpoints" / "step-0000001").is_dir()
