"""`pack train --grid-images N`: the recon grid written every `--image-every` steps shows N
images (it was offered and ignored: the grid always held 8). Real CLI, real cache and run."""

from __future__ import annotations

import numpy as np
from PIL import Image
from support.cli import cli_ok

from repackctl.metrics.recon import save_grid


def test_grid_images_sets_the_images_of_the_recon_grid(tmp_path):
    src = ["-e", "patchpix", "--resolution", "32", "-n", "16"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "16")
    cli_ok("pack", "train", *src, "--steps", "1", "--batch-size", "4", "--ch", "8", "-c", "4",
           "--grid-images", "3", "--image-every", "1", "--name", "g3", "--device", "cpu")  # fmt: skip
    grid = Image.open(tmp_path / "runs" / "g3" / "images" / "step-0000001.png")
    # the same layout of 3 images: originals over reconstructions, 32 px each
    cells = np.zeros((3, 32, 32, 3), np.uint8)
    expected = save_grid([cells, cells], tmp_path / "expected.png", ["original", "recon"])
    assert grid.size == Image.open(expected).size
