"""Atomic creation of cache groups and arrays, as readers see it, and the locks writers take.

A group (an entry, a features, latents or triplets group) is created with the attribute
``creating: true`` in its very first metadata write; its arrays follow; the marker is removed
last. A group that still carries the marker (or, written by an older version, lacks one of its
arrays) is *incomplete*: readers treat it as absent, ``cache ls``/``cache verify`` list it as
incomplete, and the next command that creates it removes it and starts over. That removal loses
nothing: writers only write samples into a complete group, so an incomplete group holds nothing
but the metadata the interrupted creation made.

Locks (local roots only, ``fcntl.flock``; released by the kernel when a process dies):

* creation: an exclusive lock on the root directory while a group is checked, removed or
  created, so two processes never race on the same creation;
* shards: ``<group>/done/locks/shard-<k>.lock``, one per shard a writer is filling, so a second
  writer of the same group skips it (``extract``);
* writers: a shared lock on the entry's directory while a command writes into the entry
  (``extract``, ``captions``, ``pack encode``, refiner triplets: ``entry_writer``); ``cache rm``
  takes it exclusively, without waiting (``removal_lock``), so it never deletes an entry or
  group that another process is writing (the writer died with a traceback, or wrote on into a
  half-deleted folder);
* readers: a shared lock on the ``done`` folder of every group a command reads rows from, and of
  its entry, for as long as the reading view lives (``GuardedArray``: a training holds it from
  start to end); `cache rm` and `cache verify --repair` take it exclusively, without waiting
  (``readers_out``), so they neither delete nor mark pending the rows a training is reading (it
  went on with the rows its buffer held, then stopped at its next read with a lost-chunk
  error). A plain `cache verify` only reads, and ignores both readers and this lock.

On fsspec URL roots there are no locks: creation and writing work the same, but two concurrent
writers of one group duplicate work (the result is the same, the data identical) — run one.

``REPACKCTL_TEST_CRASH_AFTER=<step>`` (``repackctl.crash``) makes the process exit with status
137 right after the creation step ``<step>`` (a group kind such as ``entry``/``features``/``latents``/``triplets``,
or an array name such as ``images``/``tokens``/``std``). It exists for the crash tests, like
``REPACKCTL_TEST_SHARD_DELAY=<seconds>`` (a pause per shard an extract takes, to make two
processes overlap).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr
from zarr.storage import LocalStore

from repackctl.cache.commands import remove_command
from repackctl.cache.ownership import (
    damaged_meta,
    delete_trash,
    group_dir,
    meta_problem,
    move_out,
    refuse_foreign,
    sweep_partials,
)
from repackctl.crash import crash_point
from repackctl.errors import CacheError
from repackctl.paths import is_url, local_path

CREATING = "creating"
DELAY_ENV = "REPACKCTL_TEST_SHARD_DELAY"


def test_delay() -> None:
    """Sleep ``REPACKCTL_TEST_SHARD_DELAY`` seconds per shard taken (concurrency tests only)."""
    delay = float(os.environ.get(DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)


def is_complete(group: zarr.Group, required: tuple[str, ...] = ("done",)) -> bool:
    """Whether ``group`` finished its creation (marker gone and its arrays all there)."""
    try:
        if group.attrs.get(CREATING):
            return False
        names = set(group.array_keys())
    except Exception:  # unreadable metadata below it: not a usable group
        return False
    return all(r in names for r in required)


def child_state(parent: zarr.Group, name: str, required: tuple[str, ...] = ("done",)) -> str:
    """``complete``, ``incomplete``, ``damaged`` or ``absent`` for the child group ``name`` of
    ``parent``. ``damaged``: a ``zarr.json`` in it (local roots) cannot be read as zarr metadata
    (``damaged_child``): not a creation to discard and redo, since it may describe written data."""
    try:
        if name not in parent:
            return "absent"
        if is_complete(parent[name], required):
            return "complete"
    except Exception:
        pass
    return "damaged" if damaged_child(parent, name) is not None else "incomplete"


def damaged_child(parent: zarr.Group, name: str) -> tuple[Path, str] | None:
    """(file, why) of the first unreadable ``zarr.json`` of the child ``name`` of ``parent`` (a
    local root; None on URL roots, or when all of them read)."""
    folder = group_dir(parent)
    return None if folder is None else damaged_meta(folder / name)


def damaged_where(parent: zarr.Group, name: str) -> str:
    """``<file> <why>`` of the child's damaged ``zarr.json`` (``damaged_child``), for messages."""
    found = damaged_child(parent, name)
    return f"{found[0]} {found[1]}" if found else "a zarr.json in it cannot be read"


def child_groups(parent: zarr.Group) -> list[str]:
    """Names of the child groups of ``parent``, complete or not. On a local root a child whose
    ``zarr.json`` is damaged is named too (zarr's listing fails as a whole on one such file,
    which hid every entry of the cache)."""
    try:
        return sorted(name for name, _ in parent.groups())
    except Exception:
        folder = group_dir(parent)
        if folder is None:
            return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and (p / "zarr.json").is_file() and _group_or_damaged(p)
    )


def child_nodes(parent: zarr.Group) -> list[str]:
    """Names of the child groups and arrays of ``parent``; on a local root also those whose
    ``zarr.json`` cannot be read (opening them fails: the caller skips or names them)."""
    try:
        return sorted(name for name, _ in parent.members())
    except Exception:
        folder = group_dir(parent)
        if folder is None:
            return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "zarr.json").is_file())


def _group_or_damaged(path: Path) -> bool:
    """A child folder that is a group, or whose ``zarr.json`` does not say (damaged)."""
    meta = path / "zarr.json"
    return meta_problem(meta) is not None or json.loads(meta.read_bytes())["node_type"] == "group"


def holds_samples(group: zarr.Group) -> bool:
    """Whether any sample of ``group`` is marked done (then it is not a half-made group).

    Without a ``done`` array (lost, or deleted by hand), rows stored in a sample array (the
    sharded ones) are written samples too: an interrupted creation writes none (only a text
    group's null caption, which is not sharded), and such a group, taken for one, was deleted
    with all its features or latents and computed again, with no word."""
    try:
        names = set(group.array_keys())
        if "done" not in names:
            return any(
                group[name].shards is not None and group[name].nchunks_initialized > 0
                for name in names
            )
        return bool((group["done"][:] != 0).any())
    except Exception:
        return True  # unreadable: never remove it automatically


def discard_incomplete(parent: zarr.Group, name: str) -> None:
    """Remove the child ``name`` left by an interrupted creation.

    Only a group that holds no done sample and no file the cache did not write is removed (an
    interrupted creation writes neither); anything else is an error naming what to do.
    """
    folder = group_dir(parent)
    if folder is not None:
        refuse_foreign(folder / name, "the unfinished group")
    if holds_samples(parent[name]):
        where = f"{parent.path}/{name}".strip("/")
        entry, _, sub = where.partition("/")
        kind, _, gid = sub.partition("/")
        rm = remove_command(entry, kind, gid)
        raise CacheError(
            f"{where} lacks some of its arrays but holds written samples (lost, or made by "
            "another version?): not removed",
            f"check it with `repackctl cache info {entry}`; remove it with `{rm}` to recreate it",
        )
    trash = move_out(parent, name)  # killed while deleting: never half a group here
    if trash is not None:
        crash_point("discard")
        delete_trash(trash)


def local_root(root: str) -> Path:
    """A local cache root as an absolute path; an error when it, or a folder above it, is a file
    (checked before anything reads or creates it)."""
    path = local_path(root)
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"sits under {probe}, which is a file"
        raise CacheError(
            f"the cache {path} {where}",
            "point --cache (or the cache setting) at a folder, or at a path that does not exist yet",
        )
    return path


def _lock_fd(path: Path, exclusive: bool, blocking: bool) -> int | None:
    import fcntl

    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o644)
    flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, flags | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # a file system without flock: proceed unlocked (same result, see above)
        return fd
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def creation_lock(root: str) -> Iterator[None]:
    """Exclusive lock on a local cache root while groups are created (no-op on URLs)."""
    if is_url(root):
        yield
        return
    path = local_root(root)
    path.mkdir(parents=True, exist_ok=True)
    fd = _lock_fd(path, exclusive=True, blocking=True)
    try:
        yield
    finally:
        _unlock(fd)


class ShardLocks:
    """Per-shard exclusive locks of one group's writer (``<group>/done/locks``); local roots only.

    ``try_acquire(k)`` returns False when another process holds shard ``k``; ``acquire(k)``
    waits for it. On URL roots every call succeeds at once (no locking).
    """

    def __init__(self, root: str, done: Any) -> None:
        self.dir: Path | None = None
        if not is_url(root):
            self.dir = local_path(root) / done.store_path.path / "locks"
            self.dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[int, int | None] = {}

    def _take(self, k: int, blocking: bool) -> bool:
        if self.dir is None or k in self._held:
            self._held.setdefault(k, None)
            return True
        fd = _lock_fd(self.dir / f"shard-{k:06d}.lock", exclusive=True, blocking=blocking)
        if fd is None:
            return False
        self._held[k] = fd
        return True

    def try_acquire(self, k: int) -> bool:
        return self._take(k, blocking=False)

    def acquire(self, k: int) -> None:
        self._take(k, blocking=True)

    def release(self, k: int) -> None:
        _unlock(self._held.pop(k, None))

    def release_all(self) -> None:
        for k in list(self._held):
            self.release(k)


#: seconds a writer waits for the entry lock that another process holds exclusively before it
#: takes that for a `cache rm` / `verify --repair`: a writer sweeping leftovers, `cache verify`
#: or `cache ls` hold it for an instant only (``writers_out``)
WRITER_WAIT = 5.0


def _writer_fd(folder: Path) -> int | None:
    """A descriptor holding the entry folder ``folder`` shared (``entry_writer``), or None when a
    removal or repair holds it. Alone in the entry (no writer, and no group being created in
    the root), the writer first deletes the temporaries that killed zarr writes left in it
    (``ownership.sweep_partials``): each rerun wrote its chunk anew under another name, and
    they stayed for good, counted in the entry's size, with `cache verify` saying ok."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another writer (or a removal, a repair, a check) is in it
        os.close(fd)
        return _shared_fd(folder)
    except OSError:  # a file system without flock: no way to know that it is alone
        return fd
    root = _lock_fd(folder.parent, exclusive=True, blocking=False)  # no creation meanwhile
    if root is not None:
        try:
            sweep_partials(folder)
        finally:
            _unlock(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a removal may slip in: refused then
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _shared_fd(folder: Path) -> int | None:
    """``folder`` locked shared, waiting up to ``WRITER_WAIT`` seconds for a holder of an
    exclusive lock that is only checking or sweeping; None after that (a removal or repair)."""
    deadline = time.monotonic() + WRITER_WAIT
    while True:
        fd = _lock_fd(folder, exclusive=False, blocking=False)
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(0.05)


@contextlib.contextmanager
def entry_writer(group: zarr.Group) -> Iterator[None]:
    """A shared lock on the local folder of the entry ``group`` while the block writes into it
    (several writers share it; ``removal_lock`` waits for none of them). No lock on URL roots.
    A ``CacheError`` before anything is written when a ``cache rm`` is removing the entry, or
    removed it since the caller opened it: writing on would recreate a folder of loose chunks."""
    folder = group_dir(group)
    fd = None
    if folder is not None:
        with contextlib.suppress(FileNotFoundError):  # removed a moment ago: refused below
            fd = _writer_fd(folder) if folder.is_dir() else None
        if fd is None or not (folder / "zarr.json").is_file():
            _unlock(fd)
            raise CacheError(
                f"cache entry {group.basename} is being removed or repaired by another process "
                "(`cache rm` or `cache verify --repair`); nothing was written",
                "run the command again when that has finished: it makes the entry anew after a "
                "removal, and rewrites the rows a repair marked pending",
            )
    try:
        yield
    finally:
        _unlock(fd)


@contextlib.contextmanager
def _held_exclusively(folder: Path | None) -> Iterator[bool]:
    """``folder`` (None: nothing to lock) locked exclusively while the block runs: yields True;
    False, without locking or waiting, when another process holds a lock on it now."""
    fd = None
    if folder is not None and folder.is_dir() and not folder.is_symlink():
        fd = _lock_fd(folder, exclusive=True, blocking=False)
        if fd is None:
            yield False
            return
    try:
        yield True
    finally:
        _unlock(fd)


def writers_out(folder: Path | None) -> contextlib.AbstractContextManager[bool]:
    """The entry folder ``folder`` (None: a URL store) locked exclusively while the block runs,
    so that no writer (``entry_writer``) starts in it: yields True; False, without locking or
    waiting, when a writer holds it now."""
    return _held_exclusively(folder)


READ_LOCKED = "done"  # the folder of a group that its readers lock (every group has one)


def reader_locks(array: zarr.Array, label: str) -> list[int]:
    """Shared locks that keep `cache rm` / `verify --repair` out of the rows ``array`` holds:
    on the ``done`` folder of its group and of its entry (none on a URL store; the caller keeps
    the descriptors open while it reads). A ``CacheError`` naming ``label`` when a removal or
    repair holds one now: nothing is read then."""
    store = array.store_path.store
    parts = array.store_path.path.split("/")
    if not isinstance(store, LocalStore) or len(parts) < 2:
        return []
    root = Path(store.root)
    folders = dict.fromkeys(
        [root / parts[0] / READ_LOCKED, root.joinpath(*parts[:-1], READ_LOCKED)]
    )
    fds: list[int] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        fd = _lock_fd(folder, exclusive=False, blocking=False)
        if fd is None:
            for held in fds:
                _unlock(held)
            raise CacheError(
                f"{label}: its cache entry is being removed or repaired by another process "
                "(`cache rm` or `cache verify --repair`); nothing was read",
                "run the command again when that has finished",
            )
        fds.append(fd)
    return fds


def release_readers(fds: list[int]) -> None:
    """Release what ``reader_locks`` took (also called when its view is garbage-collected)."""
    while fds:
        _unlock(fds.pop())


def readers_out(folder: Path | None) -> contextlib.AbstractContextManager[bool]:
    """The group folder ``folder`` (an entry, or one of its groups; None: a URL store) locked
    against new readers while the block runs: yields True; False, without locking or waiting,
    when a reader (``reader_locks``) holds it now."""
    return _held_exclusively(None if folder is None else folder / READ_LOCKED)


@contextlib.contextmanager
def removal_lock(folder: Path | None, what: str, group: Path | None = None) -> Iterator[None]:
    """The entry folder ``folder`` (None: a URL store) locked exclusively while the block
    removes ``what`` from it (the group folder ``group``; None: the entry), or a ``CacheError``
    at once when a writer holds the entry (``entry_writer``) or a reader the group
    (``reader_locks``): nothing is removed then."""
    with writers_out(folder) as held, readers_out(group or folder) as unread:
        if not held:  # a writer holds the entry, whichever of its groups it writes
            writing = what if group is None or folder is None else f"cache entry {folder.name}"
            also = "" if writing == what else f" (no group of it is removed meanwhile: {what})"
            raise CacheError(
                f"{writing} is being written by another process (extract, captions, pack encode "
                f"or refine){also}; nothing was removed",
                "wait for it to finish (or stop it), then run the command again",
            )
        if not unread:
            raise CacheError(
                f"{what} is being read by another process (a training, sampling or evaluate "
                "reading its rows); nothing was removed",
                "wait for it to finish (or stop it), then run the command again",
            )
        yield
