"""High-frequency (detail) error of reconstructions: how much fine structure an image set lost.

PSNR rewards a blurry average; it barely moves when a refiner restores edges and texture. The
measure here looks only at the finest scale:

``hf_error(x, ref)`` = mean over images, channels and pixels of ``|L(x) − L(ref)|``, where ``L`` is
the 3×3 discrete Laplacian ``[[0, 1, 0], [1, −4, 1], [0, 1, 0]]`` applied per channel on the
'valid' region (no padding), with images scaled to [0, 1] (uint8 / 255, floats (x + 1) / 2).

A blurred copy of an image has a higher ``hf_error`` against the original than the image itself
(which scores 0); a copy shifted by a constant colour scores 0 too, since the Laplacian removes
constants. ``hf_energy`` (the mean |L(x)|) tells whether a set is too smooth (lower than the
reference) or too noisy (higher).

Layouts as in :mod:`repackctl.metrics.recon`: uint8 (N, H, W, 3) or float [−1, 1] (N, 3, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from repackctl.errors import DataError
from repackctl.metrics.recon import _as_nchw_float64

__all__ = ["HFError", "hf_error", "laplacian"]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _unit(x: Any, name: str) -> torch.Tensor:
    """Images of either layout → float64 (N, C, H, W) in [0, 1]."""
    t, rng = _as_nchw_float64(x, name)
    return t / 255.0 if rng == 255.0 else (t + 1.0) / 2.0


def laplacian(x: Any) -> torch.Tensor:
    """Per-channel 3×3 Laplacian of images scaled to [0, 1]: float64 (N, C, H − 2, W − 2)."""
    t = _unit(x, "images")
    if min(t.shape[-2:]) < 3:
        raise DataError(f"the Laplacian needs images of at least 3×3, got {tuple(t.shape[-2:])}")
    c = t.shape[1]
    kernel = _LAPLACIAN.expand(c, 1, 3, 3)  # (C, 1, 3, 3), depthwise
    return F.conv2d(t, kernel, groups=c)


@dataclass
class HFError:
    """High-frequency error of an image set against its references (see the module docstring)."""

    error: float  # mean |L(x) − L(ref)|
    energy: float  # mean |L(x)|
    reference_energy: float  # mean |L(ref)|
    per_image: np.ndarray  # (N,) mean |L(x) − L(ref)| of each image

    def to_dict(self) -> dict[str, Any]:
        return {
            "hf_error": self.error,
            "hf_energy": self.energy,
            "hf_energy_reference": self.reference_energy,
            "n_images": int(self.per_image.shape[0]),
            "definition": "mean |Laplacian(x) - Laplacian(ref)|, 3x3 kernel, images in [0, 1]",
        }


def hf_error(x: Any, reference: Any) -> HFError:
    """High-frequency error of images ``x`` against the same images' originals ``reference``."""
    lx, lr = laplacian(x), laplacian(reference)
    if lx.shape != lr.shape:
        raise DataError(f"image shapes differ: {tuple(lx.shape)} vs {tuple(lr.shape)}")
    per = (lx - lr).abs().flatten(1).mean(dim=1)  # (N,)
    return HFError(
        error=float(per.mean()),
        energy=float(lx.abs().mean()),
        reference_energy=float(lr.abs().mean()),
        per_image=per.numpy(),
    )
