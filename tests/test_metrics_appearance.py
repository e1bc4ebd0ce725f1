"""The demo's appearance measures on synthetic images whose answer is known: high-frequency error
(Laplacian) and the per-class colour-histogram distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repackctl.errors import DataError
from repackctl.metrics.colour import class_colour_distance, colour_histogram
from repackctl.metrics.detail import hf_error, laplacian


def _stripes(n: int = 4, size: int = 32) -> np.ndarray:
    """uint8 (n, size, size, 3) images with 2-px stripes and checkers: lots of fine detail."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        pattern = ((xx // 2 + yy // 2 * rng.integers(0, 2)) % 2).astype(np.float64)
        colour = rng.uniform(40, 215, size=3)
        out.append(pattern[..., None] * colour + (1 - pattern[..., None]) * (255 - colour))
    return np.stack(out).round().astype(np.uint8)


def _blur(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()  # (N, 3, H, W)
    k = torch.ones(3, 1, 3, 3, dtype=torch.float64) / 9
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_hf_error_zero_for_identical_and_constant_shift():
    sharp = _stripes()
    assert hf_error(sharp, sharp).error == 0.0
    shifted = (sharp.astype(np.int16) // 2 + 20).astype(np.uint8)  # not a constant shift
    assert hf_error(shifted, sharp).error > 0
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    assert hf_error(flat + 30, flat).error == pytest.approx(0.0)  # constants vanish


def test_blurred_images_have_higher_hf_error_and_lower_energy():
    sharp = _stripes()
    blurred = _blur(sharp)
    noisy = np.clip(sharp + np.random.default_rng(1).normal(0, 3, sharp.shape), 0, 255)
    r_blur = hf_error(blurred, sharp)
    r_noisy = hf_error(noisy.astype(np.uint8), sharp)
    assert r_blur.error > 5 * r_noisy.error > 0  # blur destroys far more fine detail
    assert r_blur.energy < 0.5 * r_blur.reference_energy
    assert r_blur.per_image.shape == (4,)
    assert r_blur.to_dict()["hf_error"] == r_blur.error


def test_hf_error_same_for_uint8_and_float_layouts():
    sharp, blurred = _stripes(), _blur(_stripes())

    def as_float(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1

    a = hf_error(blurred, sharp).error
    b = hf_error(as_float(blurred), as_float(sharp)).error
    assert b == pytest.approx(a, rel=1e-5)
    assert laplacian(sharp).shape == (4, 3, 30, 30)
    with pytest.raises(DataError):
        hf_error(sharp[:, :16], sharp)


def test_colour_histogram_counts_pixels_in_cells():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 0] = (255, 0, 0)  # red cell (7, 0, 0)
    h = colour_histogram(img, bins=8)
    assert h.shape == (512,) and h.sum() == pytest.approx(1.0)
    assert h[0] == pytest.approx(0.75) and h[7 * 64] == pytest.approx(0.25)
    with pytest.raises(DataError):
        colour_histogram(img.astype(np.float32))


def test_class_colour_distance_zero_for_identical_and_large_for_wrong_colours():
    images = _stripes(6)
    labels = np.array([0, 0, 1, 1, 2, 2])
    same = class_colour_distance(images, labels, images, labels)
    assert same.mean == 0.0 and set(same.per_class) == {0, 1, 2}
    darker = images // 3  # same layout, other colours
    wrong = class_colour_distance(darker, labels, images, labels)
    assert wrong.mean > 0.5
    # class 2 swapped for class 0 images: only class 2 moves
    swapped = images.copy()
    swapped[4:] = images[:2]
    part = class_colour_distance(swapped, labels, images, labels)
    assert part.per_class[0] == 0.0 and part.per_class[1] == 0.0 and part.per_class[2] > 0
    with pytest.raises(DataError):
        class_colour_distance(images, labels + 10, images, labels)
