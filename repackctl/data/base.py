"""The contract every image source fulfils (built-in dataset, image folders, ImageNet, plugins).

A source is an indexable list of images. ``load(i, resolution)`` returns the final uint8 HWC RGB
crop at ``resolution`` (sources that read files apply the ADM center crop themselves). A source
that cannot decode item ``i`` raises :class:`BadImage`; the extractor skips and records it.
A source may also have ``skipped``: a list of ``(key, reason)`` for inputs it could not even
list (an unreadable sub-folder, a stray file); the extractor reports them with the undecodable
items, and ``--strict`` fails on them. Sources are registered under the ``repackctl.datasets`` entry-point group; the factory is called
as ``factory(path=..., split=..., num=..., seed=...)`` and returns an ``ImageSource``.

A source may also have ``packages``: the distributions (``importlib.metadata`` names) whose
versions decide its pixels, e.g. ``("repackctl", "pillow")`` for one that decodes with Pillow.
A new cache entry records their versions, and an extract under other versions is refused while
the entry has images to write (``cache.versions``), so one ``images`` array never holds the
pixels of two implementations. A source without it is taken as repackctl's own code
(``source_packages``); it is optional, not part of the protocol, so that sources written before
it still pass ``isinstance(source, ImageSource)``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

#: the packages of a source that names none (a plugin's): repackctl, whose code calls it
DEFAULT_PACKAGES = ("repackctl",)


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


def source_packages(source: Any) -> tuple[str, ...]:
    """The distributions whose versions decide the pixels of ``source``: repackctl (the
    built-in generator and the image folders' crop are its code, and it calls every source),
    then the source's ``packages``; ``DEFAULT_PACKAGES`` for a source that names none. A
    name is recorded as given, so a source spells it as ``importlib.metadata`` does
    (``pillow``; ``PIL`` is no distribution)."""
    named = getattr(source, "packages", None)
    if isinstance(named, str):
        named = (named,)
    if not isinstance(named, (tuple, list)):
        return DEFAULT_PACKAGES
    return tuple(dict.fromkeys((*DEFAULT_PACKAGES, *(str(p) for p in named))))
