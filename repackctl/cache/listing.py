"""Does a cache entry still hold the files its source lists, as they were when extracted?

An entry records, per item, the source's key (the file's path under the data root) and label.
A folder whose files were renamed, moved to another class folder or replaced by other files of
the same count passes the entry's source check (root, split, layout, counts), and an extract
rerun would find every shard done and keep the old images and features under the new listing:
training would then read the old pixels with labels that no longer belong to them. This check
compares the finished items' recorded keys and labels with the source's listing before
anything is written (``check_listing``).

An image replaced under the same name (fixed, re-encoded, swapped) passed that check too, and
the rerun kept the old pixels and features with no word. An entry of an image folder records
the file of each image it holds as the extract read it (``fingerprints``: size,
``st_mtime_ns``, sha256 of the bytes it decoded), and ``check_files`` compares it with the file
now: the same size and mtime is the same file (a rerun over an unchanged folder costs a
``stat`` per file); otherwise the file is hashed, and the same bytes (a copy that did not keep
the times) are the same file too. Inputs recorded as skipped hold no pixels and no fingerprint
(a caption index file listed by an older version is one; `repackctl captions` writes into it):
they stay skipped, as the entry recorded them, and their rows are not read (a damaged chunk of
skipped rows only, which `cache verify --repair` does not look at, refused every rerun).
Entries without fingerprints (other sources, entries made before them) are not compared. A
refusal names the first changed files and prints every one as a ``Warning:`` line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from repackctl.cache.commands import remove_command
from repackctl.cache.integrity import GuardedArray, repair_hint, rows_per_key
from repackctl.errors import CacheError
from repackctl.files import sha256_file
from repackctl.progress import warn

__all__ = ["NO_FILE", "changed_files", "check_files", "check_listing", "fingerprint_row"]

# differences named in the message, at most
_SHOWN = 3
#: the fingerprint row of an item whose file was not read (the array's fill value)
NO_FILE = np.full(6, -1, np.int64)


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
    required = np.asarray(entry.done_mask()) != pending
    finished = np.flatnonzero(required)  # (M,)
    if not len(finished):
        return
    # read through the checksum check: a lost chunk is an error naming it, not empty keys and
    # labels −1 taken for changed data (whose hint, `cache rm`, deleted every group of the
    # entry), and a corrupt one is not a traceback; the repair marks those rows pending
    redo = repair_hint(entry.name, "the same `repackctl extract`")
    keys, labels = (
        np.asarray(GuardedArray(arr, required, f"cache entry {entry.name} {name}", redo)[:])
        for name, arr in (("keys", entry.keys), ("labels", entry.labels))
    )  # (N,) each
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


def fingerprint_row(size: int, mtime_ns: int, sha256: bytes) -> np.ndarray:
    """The ``fingerprints`` row (6,) of a file read as ``size`` bytes with digest ``sha256``,
    its mtime ``mtime_ns`` (the digest as 4 big-endian int64 words)."""
    return np.array([size, mtime_ns, *np.frombuffer(sha256, ">i8")], np.int64)


class _Files(_Listed, Protocol):
    def path(self, index: int) -> Path: ...


class _Fingerprinted(_Recorded, Protocol):
    fingerprints: object | None  # (N, 6) int64, or None


def check_files(entry: _Fingerprinted, source: _Files, written: int, hint: str) -> None:
    """Refuse (``CacheError``) when the file of an image ``entry`` holds (its done code is
    ``written``) changed since the extract read it (another size, or another mtime and other
    bytes). ``hint``: the repair command for an unreadable ``fingerprints`` chunk. Only files
    whose size or mtime changed are read. Without fingerprints (or a source without files)
    nothing is checked.

    The message names the first changed files; when there are more, every one is also printed
    as a ``Warning:`` line before it (the refusal writes nothing, and the user has to restore
    each of them: a count alone does not say which)."""
    recorded, path_of = entry.fingerprints, getattr(source, "path", None)
    if recorded is None or not callable(path_of):
        return
    held = np.asarray(entry.done_mask()) == written  # (N,)
    if not held.any():
        return
    # only the chunks holding images are read: a skipped row holds no fingerprint, and a damaged
    # chunk of skipped rows only is one `cache verify --repair` never looks at (it reads the
    # chunks of written rows), so refusing on it sent the user round that loop for good. A lost
    # or corrupt chunk of written rows is an error naming the repair, never its fill read as
    # "nothing recorded"
    rows = np.flatnonzero(held)  # (M,)
    prints = _read_rows(GuardedArray(recorded, held, f"{entry.name} fingerprints", hint), rows)
    read = prints[:, 0] >= 0  # (M,) the file was read when extracted (recorded)
    changed = changed_files(rows[read], prints[read], path_of)
    if changed:
        _refuse_changed(entry.name, source, changed, int(read.sum()))


def _read_rows(guard: GuardedArray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of ``guard``, reading only the stored objects that hold them: one
    slice per run of adjacent ones (one read when every chunk holds some)."""
    step = rows_per_key(guard.array)
    keys = np.unique(rows // step)
    parts = []
    for run in np.split(keys, np.flatnonzero(np.diff(keys) > 1) + 1):
        lo, hi = int(run[0]) * step, (int(run[-1]) + 1) * step
        inside = rows[np.searchsorted(rows, lo) : np.searchsorted(rows, hi)]
        parts.append(np.asarray(guard[lo:hi])[inside - lo])
    return np.concatenate(parts)


def changed_files(
    rows: np.ndarray, prints: np.ndarray, path_of: Callable[[int], Path]
) -> list[tuple[int, str]]:
    """``(row, why)`` of each of ``rows`` whose file (``path_of(row)``) is not the one its
    fingerprint row (``prints``, (M, 6)) records. Only files whose size or mtime changed are
    read (hashed)."""
    stats = [_stat(path_of(i)) for i in rows.tolist()]  # (size, mtime_ns), or an OSError
    now = np.array([st if isinstance(st, tuple) else (-2, -2) for st in stats], np.int64)
    same = (now.reshape(-1, 2) == prints[:, :2]).all(1)  # (M,) same size and mtime
    found: list[tuple[int, str]] = []
    for j in np.flatnonzero(~same).tolist():  # only these files are read
        i = int(rows[j])
        why = _changed(path_of(i), prints[j], stats[j])
        if why is not None:
            found.append((i, why))
    return found


def _refuse_changed(name: str, source: _Files, changed: list[tuple[int, str]], of: int) -> None:
    """The refusal of an entry ``name`` whose ``of`` recorded files include ``changed``."""
    named = [f"{source.key(i)!r} ({why})" for i, why in changed]
    more = ""
    if len(named) > _SHOWN:
        for line in named:  # every one, for the user to restore (the message names 3)
            warn(f"changed since cache entry {name} was extracted: {line}")
        more = f"; {len(named) - _SHOWN} more: all {len(named)} are listed above"
    raise CacheError(
        f"cache entry {name} holds the old images of {len(named)} of {of} files that changed "
        f"since they were extracted ({'; '.join(named[:_SHOWN])}{more}); nothing was written",
        "restore those files as they were, or remove the entry with "
        f"`{remove_command(name)}` and extract again",
    )


def _stat(path: Path) -> tuple[int, int] | OSError:
    """(size, mtime_ns) of the file at ``path``, or the error that stat raised."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e
    return st.st_size, st.st_mtime_ns


def _changed(path: Path, row: np.ndarray, stat: tuple[int, int] | OSError) -> str | None:
    """Why the file at ``path`` (``stat``: its size and mtime now) is not the one ``row``
    records, or None when it holds the same bytes (hashed only when the size is the same)."""
    if isinstance(stat, OSError):
        return f"cannot be read: {stat.strerror or type(stat).__name__}"
    if stat[0] != row[0]:
        return f"{int(row[0])} bytes then, {stat[0]} now"
    try:
        digest = bytes.fromhex(sha256_file(path))
    except OSError as e:
        return f"cannot be read: {e.strerror or type(e).__name__}"
    same = np.array_equal(fingerprint_row(int(row[0]), int(row[1]), digest), row)
    return None if same else "other bytes, same size"
