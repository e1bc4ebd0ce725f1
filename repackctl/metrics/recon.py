"""Reconstruction metrics (PSNR, SSIM) and the image-grid writer other stages reuse.

Layouts follow DESIGN.md §2: uint8 images are (N, H, W, 3) (data range 255); float images are
model tensors in [-1, 1], (N, 3, H, W) (data range 2.0). A single image (3 dims) counts as N = 1.

PSNR = 10·log10(L² / MSE) per image, then the **mean over images of per-image PSNR** (the usual
convention of reconstruction tables; the PSNR of the pooled MSE is never higher, by Jensen's
inequality). Identical images have MSE 0 and PSNR = inf: they are counted in
``n_identical`` and left out of the mean, which is inf only when every image is identical.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, C1 = (K1·L)², C2 = (K2·L)²,
computed per channel on the 'valid' region (no padding, as the authors' MATLAB ``filter2(…,
'valid')``), averaged over the map, the channels, then the images. Unlike the MATLAB reference we
do not downsample large images first and we do not convert to grey; the statistics use population
(1/n) moments under the window, as the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from repackctl.errors import DataError
from repackctl.metrics.frechet import atomic_path

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_nchw_float64(x: Any, name: str) -> tuple[torch.Tensor, float]:
    """Any image batch → float64 (N, C, H, W) and its data range (255 for uint8, 2 for floats)."""
    t = torch.as_tensor(x.copy() if isinstance(x, np.ndarray) and not x.flags.writeable else x)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise DataError(f"{name}: expected images of 3 or 4 dims, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        if t.shape[-1] not in (1, 3):
            raise DataError(f"{name}: uint8 images must be (N, H, W, 3), got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).double(), 255.0  # (N, C, H, W)
    if t.is_floating_point():
        if t.shape[1] not in (1, 3):
            raise DataError(
                f"{name}: float images must be (N, 3, H, W) in [-1, 1], got {tuple(t.shape)}"
            )
        return t.double(), 2.0  # (N, C, H, W)
    raise DataError(f"{name}: images must be uint8 or float, got {t.dtype}")


def _is_uint8(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dtype == torch.uint8
    return np.asarray(x).dtype == np.uint8


def _pair(a: Any, b: Any, data_range: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    if _is_uint8(a) != _is_uint8(b):
        raise DataError(
            "cannot compare uint8 images with float images",
            hint="convert both to uint8 (N, H, W, 3) or both to float [-1, 1] (N, 3, H, W)",
        )
    x, range_a = _as_nchw_float64(a, "first")
    y, _ = _as_nchw_float64(b, "second")
    if x.shape != y.shape:
        raise DataError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y, float(data_range) if data_range is not None else range_a


@dataclass
class PSNRResult:
    """Per-image PSNR and their mean over images with a finite PSNR."""

    per_image: np.ndarray  # (N,) dB, inf where identical
    mean: float  # mean over finite entries; inf if all images are identical
    n_identical: int
    data_range: float

    def to_dict(self) -> dict:
        """JSON-safe: ``psnr`` is None when every image is identical (JSON has no inf)."""
        return {
            "psnr": self.mean if math.isfinite(self.mean) else None,
            "psnr_reduction": "mean over images of per-image PSNR (identical images excluded)",
            "n_images": int(self.per_image.shape[0]),
            "n_identical": self.n_identical,
            "data_range": self.data_range,
        }


def psnr(a: Any, b: Any, data_range: float | None = None) -> PSNRResult:
    """PSNR between two image batches (uint8 NHWC → L = 255; float [-1, 1] NCHW → L = 2)."""
    x, y, rng = _pair(a, b, data_range)
    mse = ((x - y) ** 2).flatten(1).mean(dim=1)  # (N,)
    with np.errstate(divide="ignore"):
        per = 10.0 * np.log10(rng**2 / mse.numpy())  # inf where mse == 0
    finite = np.isfinite(per)
    mean = float(per[finite].mean()) if finite.any() else math.inf
    return PSNRResult(per, mean, int((~finite).sum()), rng)


def psnr_text(psnr: float | None, exact: int, n: int) -> str:
    """A mean PSNR of ``n`` images as ``evaluate recon`` and the demo show it: ``18.20 dB``,
    ``18.20 dB (mean of 38; 2 exact, PSNR = inf)``, ``inf (all 40 exact)``, or ``n/a`` where
    there is no figure (``psnr`` None with no exact image, or NaN)."""
    if psnr is None or math.isnan(psnr):
        return f"inf (all {n} exact)" if psnr is None and exact else "n/a"
    return f"{psnr:.2f} dB" + (
        f" (mean of {n - exact}; {exact} exact, PSNR = inf)" if exact else ""
    )


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """The 1-D Gaussian of the SSIM window (size,), sums to 1; the window is its outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim_per_image(a: Any, b: Any, data_range: float | None = None) -> np.ndarray:
    """SSIM of each image pair (N,), mean over the valid map and the channels."""
    x, y, rng = _pair(a, b, data_range)
    n, c, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise DataError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {h}×{w}")
    g = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA)
    rows, cols = g.view(1, 1, -1, 1).expand(c, 1, -1, -1), g.view(1, 1, 1, -1).expand(c, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # the Gaussian window is separable: two 1-D passes (2k taps, not k²; 6× faster at 64 px)
        t = F.conv2d(t, rows, groups=c)  # depthwise = per channel
        return F.conv2d(t, cols, groups=c)  # (N, C, H-k+1, W-k+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * rng) ** 2, (SSIM_K2 * rng) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )  # (N, C, h', w')
    return ssim_map.flatten(1).mean(dim=1).numpy()  # (N,)


def ssim(a: Any, b: Any, data_range: float | None = None) -> float:
    """Mean SSIM over an image batch (Wang et al. 2004 constants; see module docstring)."""
    return float(ssim_per_image(a, b, data_range).mean())


# --------------------------------------------------------------------------- grids
def save_grid(
    rows: Sequence[np.ndarray],
    path: str | Path,
    labels: Sequence[str] | None = None,
    *,
    pad: int = 2,
    background: int = 255,
) -> Path:
    """Write rows of uint8 (N, H, W, 3) images side by side as one PNG, atomically.

    Rows may hold different numbers or sizes of images; cells are padded to the largest image.
    ``labels`` (one per row) are drawn in a left margin.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = [np.asarray(r) for r in rows]
    if not rows or any(r.dtype != np.uint8 or r.ndim != 4 or r.shape[-1] != 3 for r in rows):
        raise DataError(
            "save_grid needs a non-empty list of uint8 (N, H, W, 3) arrays",
            hint="convert [-1, 1] floats with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8)",
        )
    if labels is not None and len(labels) != len(rows):
        raise DataError(f"{len(labels)} labels for {len(rows)} rows")
    cell_h = max(r.shape[1] for r in rows)
    cell_w = max(r.shape[2] for r in rows)
    cols = max(r.shape[0] for r in rows)
    font = ImageFont.load_default()
    margin = 0
    if labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        margin = max(int(probe.textlength(str(t), font=font)) for t in labels) + 2 * pad + 4
    width = margin + cols * (cell_w + pad) + pad
    height = len(rows) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        top = pad + i * (cell_h + pad)
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (margin + pad + j * (cell_w + pad), top))
        if labels:
            draw.text((pad + 2, top + cell_h // 2 - 5), str(labels[i]), fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
