"""ADM-style center crop and robust image decoding.

Center crop as in guided-diffusion's ``image_datasets.center_crop_arr`` (Dhariwal & Nichol 2021),
used by DiT, REPA, LightningDiT and RePack: halve with a box filter while the short side is at
least twice the target, resize bicubically so the short side equals the target, crop the center.

Decoding converts every PIL mode (CMYK, 16-bit, grayscale, palette, RGBA, …) to 8-bit RGB and
keeps huge images from exhausting memory (JPEG draft decoding at reduced scale, a pixel cap).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from repackctl.data.base import BadImage

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a bad input, not a grey image
#: refuse to decode more than this many pixels at full size (~ 16k × 16k)
MAX_PIXELS = 256_000_000
#: JPEG images above this many pixels are decoded at a reduced DCT scale first
DRAFT_PIXELS = 40_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (alpha dropped, 16-bit scaled, palette expanded)."""
    if img.mode == "RGB":
        return img
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(source: str | Path | bytes, target: int | None = None) -> Image.Image:
    """Decode ``source`` (a path, or a file's bytes already read) to RGB; raise ``BadImage``
    (with the reason) for anything unreadable."""
    try:
        if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
            raise BadImage("empty file")
        opened = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
        with Image.open(opened) as img:
            w, h = img.size
            if w * h > MAX_PIXELS and img.format != "JPEG":
                raise BadImage(f"too large ({w}x{h})")
            if img.format == "JPEG" and target and w * h > DRAFT_PIXELS:
                # decode at a reduced scale but keep at least 2x the target for the box halving
                img.draft("RGB", (max(2 * target, w // 8), max(2 * target, h // 8)))
            img.load()
            return to_rgb(img)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage("too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "not an image" if "cannot identify" in str(e) else f"corrupt: {e}"
        raise BadImage(reason) from None


def center_crop(img: Image.Image, size: int) -> np.ndarray:
    """ADM center crop of an RGB image → uint8 (size, size, 3)."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])
