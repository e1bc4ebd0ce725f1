"""`cache rm`: remove an entry, or one group of it, and nothing else; finish a removal that was
killed.

Only the cache's own files are removed (``repackctl.cache.ownership``), and nothing that a writer
is filling or a reader reading (``repackctl.cache.creation.removal_lock``). On a local root the
group's folder is first renamed into ``<root>/.removing/`` (a folder without ``zarr.json``:
neither zarr nor the cache lists it) and deleted there. A removal killed while it deletes leaves
its rest there, not a half-deleted folder under the entry's name: that folder was no longer an
entry (its ``zarr.json`` gone), so `cache rm` did not find it and `extract` refused to make the
entry anew over it. The same `cache rm` finishes it (``finish_removal``). URL roots delete
through zarr.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import zarr

from repackctl.cache.creation import removal_lock
from repackctl.cache.ownership import delete_trash, drop_trash, group_dir, move_out, refuse_foreign
from repackctl.cache.store import NoCache, open_root
from repackctl.crash import crash_point

__all__ = ["check_removable", "entry_folder", "finish_removal", "remove"]


def entry_folder(root: str, name: str) -> Path | None:
    """The local folder of entry ``name`` (None on a URL root)."""
    folder = group_dir(open_root(root, mode="r"))
    return None if folder is None else folder / name


def _locked(root: str, name: str, sub: str | None) -> contextlib.AbstractContextManager[None]:
    """``removal_lock`` of the entry, for the group to remove: its readers too keep it."""
    folder = entry_folder(root, name)
    group = None if folder is None or sub is None else folder / sub
    return removal_lock(folder, _what(name, sub), group)


def check_removable(root: str, name: str, sub: str | None = None) -> None:
    """Refuse (``CacheError``, naming it) when the group to remove holds a file the cache did not
    write, or when another process is writing into its entry: ``remove`` deletes only the
    cache's own files, and nothing that is being written, so it deletes nothing then."""
    _check_files(root, name, sub)
    with _locked(root, name, sub):
        pass


def remove(root: str, name: str, sub: str | None = None) -> None:
    """Delete an entry, or one of its groups (``features/<id>``), after checking that it holds
    nothing but the cache's own files and that no process writes into the entry
    (``check_removable``); the entry stays locked against writers until the group is moved out
    of the cache's tree (see the module docstring)."""
    with _locked(root, name, sub):
        _check_files(root, name, sub)
        trash = move_out(*_target(root, name, sub))
    if trash is not None:
        crash_point("cache-rm")
        delete_trash(trash)


def finish_removal(root: str, name: str, sub: str | None = None) -> bool:
    """Delete what a killed `cache rm` of entry ``name`` (its group ``sub``) left in
    ``<root>/.removing``; False when it left nothing (or the root is a URL)."""
    try:
        g = open_root(root, mode="r")
    except NoCache:
        return False
    return drop_trash(g, name if sub is None else f"{name}/{sub}")


def _target(root: str, name: str, sub: str | None) -> tuple[zarr.Group, str]:
    g = open_root(root, mode="a")
    target = name if sub is None else f"{name}/{sub}"
    parent, _, leaf = target.rpartition("/")
    return (g[parent] if parent else g), leaf


def _check_files(root: str, name: str, sub: str | None) -> None:
    grp, leaf = _target(root, name, sub)
    folder = group_dir(grp)
    if folder is not None:
        refuse_foreign(folder / leaf, "the cache group")


def _what(name: str, sub: str | None) -> str:
    return f"cache entry {name}" if sub is None else f"{sub} of cache entry {name}"
