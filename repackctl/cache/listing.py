"""Does a cache entry still hold the files its source lists?

An entry records, per item, the source's key (the file's path under the data root) and label.
A folder whose files were renamed, moved to another class folder or replaced by other files of
the same count passes the entry's source check (root, split, layout, counts), and an extract
rerun would find every shard done and keep the old images and features under the new listing:
training would then read the old pixels with labels that no longer belong to them. This check
compares the finished items' recorded keys and labels with the source's listing before
anything is written. File contents are not compared (the extract does not re-read finished
files): an image replaced under the same name is not seen.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from repackctl.errors import CacheError

__all__ = ["check_listing"]

# differences named in the message, at most
_SHOWN = 3


class _Listed(Protocol):
    name: str

    def key(self, index: int) -> str: ...

    def label(self, index: int) -> int: ...


class _Recorded(Protocol):
    name: str
    keys: object  # (N,) str array
    labels: object  # (N,) int array
    done: object  # (N,) int8 codes

    def done_mask(self) -> np.ndarray: ...


def check_listing(entry: _Recorded, source: _Listed, pending: int) -> None:
    """Refuse (``CacheError``) when an item ``entry`` has finished (its done code is not
    ``pending``) is recorded under another key or label than ``source`` now gives it."""
    # read through the checksum check: a corrupt chunk is an error naming it, not a traceback
    finished = np.flatnonzero(np.asarray(entry.done_mask()) != pending)  # (M,)
    if not len(finished):
        return
    keys, labels = np.asarray(entry.keys[:]), np.asarray(entry.labels[:])  # (N,) each
    found: list[str] = []
    count = 0
    for i in finished.tolist():
        key, label = source.key(i), int(source.label(i))
        if str(keys[i]) == key and int(labels[i]) == label:
            continue
        count += 1
        if len(found) < _SHOWN:
            found.append(_difference(i, str(keys[i]), int(labels[i]), key, label))
    if count:
        more = f"; {count - len(found)} more" if count > len(found) else ""
        raise CacheError(
            f"cache entry {entry.name} holds other files than {source.name} lists now "
            f"({count} of {len(finished)} extracted items differ: {'; '.join(found)}{more})",
            f"the data changed since it was extracted: remove the entry with `repackctl cache "
            f"rm {entry.name}` and extract again, or restore the data; nothing was written",
        )


def _difference(i: int, old_key: str, old_label: int, key: str, label: int) -> str:
    if old_key != key:
        return f"item {i} was {old_key!r}, now {key!r}"
    return f"item {i} ({key!r}) was class {old_label}, now {label}"
