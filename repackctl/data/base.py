"""The contract every image source fulfils (built-in dataset, image folders, ImageNet, plugins).

A source is an indexable list of images. ``load(i, resolution)`` returns the final uint8 HWC RGB
crop at ``resolution`` (sources that read files apply the ADM center crop themselves). A source
that cannot decode item ``i`` raises :class:`BadImage`; the extractor skips and records it.
A source may also have ``skipped``: a list of ``(key, reason)`` for inputs it could not even
list (an unreadable sub-folder, a stray file); the extractor reports them with the undecodable
items, and ``--strict`` fails on them. Sources are registered under the ``repackctl.datasets`` entry-point group; the factory is called
as ``factory(path=..., split=..., num=..., seed=...)`` and returns an ``ImageSource``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class BadImage(Exception):
    """Item cannot be decoded (truncated, empty, not an image). Carries the reason."""


@runtime_checkable
class ImageSource(Protocol):
    """An indexable, picklable collection of labelled images."""

    #: dataset id used in cache entry names, e.g. ``builtin`` or ``imagenet``; safe in paths
    name: str
    #: split name, e.g. ``train`` or ``val``
    split: str
    #: class names in label order, or ``None`` for unlabelled data (labels are then -1)
    class_names: list[str] | None

    def __len__(self) -> int: ...

    def key(self, index: int) -> str:
        """A stable source id of item ``index`` (file path relative to the root, or ``seed:i``).

        Must be valid Unicode (it is stored in the Zarr ``keys`` array; the extractor checks every
        key before encoding). File names that are not UTF-8 are escaped losslessly, see
        ``repackctl.data.imagefolder.escape_name``.
        """
        ...

    def label(self, index: int) -> int:
        """Class index of item ``index``; -1 when unlabelled."""
        ...

    def load(self, index: int, resolution: int) -> np.ndarray:
        """Item ``index`` as uint8 (resolution, resolution, 3) RGB; raises ``BadImage``."""
        ...

    def describe(self) -> dict:
        """JSON-safe attributes that change the pixels (root, seed, version…), stored in the cache."""
        ...
