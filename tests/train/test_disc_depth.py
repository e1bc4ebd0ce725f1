"""A pack discriminator too deep for the image side is refused before anything is written.

`pack train --disc-layers 4` on 32 px images built a PatchGAN whose last 4×4 convolutions had
a 2-pixel map left: it trained every step up to `gan_start` (400 with the small preset, before
its first checkpoint at 500) and then stopped with a PyTorch traceback. The limit is exact:
the deepest discriminator the check lets through runs. Real CLI runs on a real patchpix cache.
"""

from __future__ import annotations

import pytest
import torch
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("disc-depth-cache", 16)

TINY = [
    *("--preset", "small", "--encoder", "patchpix", "--resolution", "32", "-c", "4"),
    *("--ch", "8", "--disc-channels", "4", "--batch-size", "8", "--image-every", "0"),
    *("--device", "cpu", "--gan-weight", "0.5", "--gan-start", "1", "--steps", "2"),
]


def test_a_discriminator_too_deep_for_the_images_is_refused(cache, tmp_path):
    out = cli_refused(ConfigError.exit_code, "pack", "train", *TINY, "--disc-layers", "4")
    assert "pack.disc_layers 4 is too deep for 32 px images" in out, out
    assert "--disc-layers 3 or fewer" in out and "--gan-weight 0" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # the deepest one allowed trains through its GAN steps
    cli_ok("pack", "train", *TINY, "--disc-layers", "3", "--name", "ok")
    assert list_checkpoints(tmp_path / "runs" / "ok")[-1].name == "step-0000002"


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_the_depth_limit_is_the_one_the_network_has(norm):
    from repackctl.pack.discriminator import (
        DiscriminatorConfig,
        PatchDiscriminator,
        max_disc_layers,
    )

    for side in (16, 23, 24, 32, 40, 47, 48, 64):
        most = max_disc_layers(side)
        for layers in (most, most + 1):
            if layers < 1:
                continue
            disc = PatchDiscriminator(
                DiscriminatorConfig(base_channels=2, n_layers=layers, norm=norm)
            )
            try:
                disc(torch.zeros(2, 3, side, side))
                ran = True
            except (RuntimeError, ValueError):
                ran = False
            assert ran == (layers <= most), (side, layers)
