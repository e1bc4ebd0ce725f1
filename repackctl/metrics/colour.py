"""Colour-histogram distance between two labelled image sets, class by class.

Are the colours of generated images right? For each class ``c`` present in both sets:

* ``h_a(c)``, ``h_b(c)``: the 3-D RGB histogram of all pixels of the class's images, ``bins`` bins
  per channel (8 → 512 cells of 32 grey levels each), normalised to sum to 1;
* the class's distance is the L1 distance ``Σ |h_a(c) − h_b(c)|`` (0 for identical colour
  distributions, 2 for disjoint ones).

``class_colour_distance`` returns the mean over those classes (and each class's value).

The distance of finite sets is biased upwards by sampling noise, the more so the fewer images:
compare a set only with a reference of the same size. The demo's yardstick is *real vs real*:
``n`` real training images per class against the real validation images, where ``n`` is the
number of samples per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repackctl.errors import DataError

__all__ = ["ColourDistance", "class_colour_distance", "colour_histogram"]


def colour_histogram(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised 3-D RGB histogram (bins³,) of all pixels of uint8 images (N, H, W, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"colour histograms need uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}"
        )
    if not 1 <= bins <= 256 or 256 % bins:
        raise DataError(f"bins must divide 256, got {bins}")
    q = (images // (256 // bins)).reshape(-1, 3).astype(np.int64)  # (P, 3) cell per channel
    cells = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (P,)
    hist = np.bincount(cells, minlength=bins**3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


@dataclass
class ColourDistance:
    """Mean per-class L1 distance of colour histograms (see the module docstring)."""

    mean: float
    per_class: dict[int, float] = field(default_factory=dict)
    bins: int = 8

    def to_dict(self) -> dict[str, Any]:
        return {
            "colour_distance": self.mean,
            "per_class": {str(k): v for k, v in self.per_class.items()},
            "definition": f"per class: L1 between normalised {self.bins}^3 RGB histograms; "
            "mean over classes",
        }


def class_colour_distance(
    images_a: np.ndarray,
    labels_a: np.ndarray,
    images_b: np.ndarray,
    labels_b: np.ndarray,
    bins: int = 8,
) -> ColourDistance:
    """Mean over the classes present in both sets of the L1 distance of their colour histograms."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if len(labels_a) != len(images_a) or len(labels_b) != len(images_b):
        raise DataError("each image set needs one label per image")
    classes = sorted(set(labels_a.tolist()) & set(labels_b.tolist()))
    if not classes:
        raise DataError("the two image sets share no class")
    per = {}
    for c in classes:
        ha = colour_histogram(images_a[labels_a == c], bins)
        hb = colour_histogram(images_b[labels_b == c], bins)
        per[int(c)] = float(np.abs(ha - hb).sum())
    return ColourDistance(float(np.mean(list(per.values()))), per, bins)
