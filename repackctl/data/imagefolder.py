"""Image folders and ImageNet as image sources.

``imagefolder:PATH``: class sub-folders give labels (sorted class names stored); a flat folder
has no labels (-1). ``imagenet``: an ImageFolder-layout root (``train/`` and ``val/`` with synset
sub-folders) from the ``imagenet_root`` setting or ``imagenet:PATH``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from repackctl.data.crop import center_crop, open_image
from repackctl.errors import DataError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".jfif"}
#: files that are listed and then skipped as "not an image" — anything not hidden counts, so that
#: a stray file is reported instead of silently ignored
IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


def _list_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or f.lower() in IGNORED:
                continue
            files.append(Path(dirpath) / f)
    return files


class ImageFolderSource:
    """Images under ``path``: class sub-folders → labels, a flat folder → unlabelled."""

    def __init__(
        self,
        path: str | None = None,
        split: str = "train",
        num: int | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if not path:
            raise DataError("imagefolder needs a folder", "use --data imagefolder:/path/to/images")
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}", "check the path after imagefolder:")
        self.root = root
        self.split = split
        classes = sorted(
            d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if classes:
            self.class_names: list[str] | None = classes
            self._files = []
            self._labels = []
            for label, cls in enumerate(classes):
                for f in _list_files(root / cls):
                    self._files.append(f)
                    self._labels.append(label)
        else:
            self.class_names = None
            self._files = _list_files(root)
            self._labels = [-1] * len(self._files)
        if not self._files:
            raise DataError(f"no files under {root}", "put images (or class sub-folders) there")
        self.total = len(self._files)
        if num is not None and num < self.total:
            # a seeded subset spread over all classes, kept in folder order
            keep = np.sort(np.random.default_rng(seed).permutation(self.total)[:num])
            self._files = [self._files[i] for i in keep]
            self._labels = [self._labels[i] for i in keep]
        self.num = len(self._files)
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
        self.name = name or f"folder-{root.name}-{digest}"
        if num is not None and num < self.total:
            self.name += f"-n{num}"

    def __len__(self) -> int:
        return self.num

    def key(self, index: int) -> str:
        return str(self._files[index].relative_to(self.root))

    def label(self, index: int) -> int:
        return self._labels[index]

    def load(self, index: int, resolution: int) -> np.ndarray:
        return center_crop(open_image(self._files[index], resolution), resolution)

    def describe(self) -> dict:
        return {
            "source": "imagefolder",
            "root": str(self.root),
            "split": self.split,
            "num": self.num,
            "total": self.total,
            "classes": len(self.class_names or []),
            "crop": "adm-center",
        }


def imagenet_source(
    path: str | None = None,
    split: str = "train",
    num: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> ImageFolderSource:
    """ImageNet in ImageFolder layout: ``<root>/<split>/<synset>/*.JPEG``."""
    base = path or root
    if not base:
        raise DataError(
            "no ImageNet folder configured",
            "set REPACKCTL_IMAGENET_ROOT=/data/imagenet (train/ and val/ inside) "
            "or pass --data imagenet:/data/imagenet",
        )
    folder = Path(base).expanduser() / split
    if not folder.is_dir():
        raise DataError(
            f"ImageNet split folder not found: {folder}",
            "the root must hold train/ and val/ with one sub-folder per class",
        )
    src = ImageFolderSource(str(folder), split=split, num=num, seed=seed, name="imagenet")
    return src
