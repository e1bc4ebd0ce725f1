"""Atomic file writes (JSON, .npy, PNG), file hashes, and uint8 ↔ [−1, 1] image conversion."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

TMP_PREFIX = ".tmp-"  # temporary files and folders start with this; never read as results


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [−1, 1] → uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # (B, 3, H, W)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def from_uint8(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, H, W, 3) → (B, 3, H, W) in [−1, 1] (what the refiner is trained on)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (B, H, W, 3)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write one PNG through a temporary name: an existing PNG is always complete."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
