"""What inside a local cache folder the cache itself wrote, so that nothing else is ever deleted.

The cache writes, below a group folder, only (README "Cache layout"):

* ``zarr.json`` of every group and array (zarr's ``LocalStore`` writes it through a temporary
  ``zarr.<hex>.partial`` that a killed writer can leave behind);
* the chunk or shard files of an array under its ``c/`` folder (chunk keys inside the array's
  chunk grid as its ``zarr.json`` gives it, same temporaries);
* the shard locks of a writer, ``<array>/locks/shard-<k>.lock`` (``creation.ShardLocks``);
* ``.removing/`` in a group: what `cache rm` moved there to delete (checked to be the cache's
  own before the move; the rest of a killed removal until its rerun, ``cache.removal``, which
  checks again that it holds only names the cache writes before it deletes it). Each of its
  entries is such a folder: any other path in it (a file, a link, a name the cache never
  writes) is foreign too.

A group folder that is itself a link is never moved nor deleted (``refuse_link``): `cache rm`
does not follow links. (An older `cache rm` moved such a link into ``.removing`` and then failed;
the rerun names it and says how to put it back, instead of refusing without a way out.)

Groups hold what the cache creates there: the root and the ``features/``, ``latents/``,
``triplets/``, ``text/`` folders (no attributes) hold groups, an entry or data group arrays and
such folders; a ``zarr.json`` that is no zarr metadata is the cache's only in a folder holding a
``done`` array (a group of its whose metadata was damaged, which `cache rm` still removes).

Anything else (a note, a symlink, a folder without ``zarr.json`` holding files, a chunk key
outside the grid, an array where groups are written) is *foreign*:
``cache rm`` and the removal of an unfinished group refuse to run when a group holds one, and a
new group is never created in a folder of its name that is not a zarr node already. Only local
roots are checked; an fsspec URL store holds nothing but the keys zarr writes there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from repackctl.errors import CacheError

META = "zarr.json"
TRASH = ".removing"  # where `cache rm` deletes (repackctl.cache.removal)
_PARTIAL = re.compile(r"^(zarr|c|\d+)\.[0-9a-f]{32}\.partial$")  # LocalStore's temporaries
_CHUNK = re.compile(r"^\d+$")
_LOCK = re.compile(r"^shard-\d+\.lock$")
# every file name the cache writes somewhere below a group (``foreign_in_rest``)
_REST_FILES = (re.compile(rf"^({re.escape(META)}|c)$"), _CHUNK, _LOCK, _PARTIAL)


def group_dir(group: zarr.Group) -> Path | None:
    """The local folder of ``group``, or None when its store is not a local folder."""
    store = group.store_path.store
    if not isinstance(store, LocalStore):
        return None
    path = group.store_path.path
    return Path(store.root) / path if path else Path(store.root)


def _meta_doc(path: Path) -> dict | None:
    """The zarr metadata document of the node folder ``path`` (its ``zarr.json``) as a dict, or
    None when there is none or it cannot be read as one."""
    meta = path / META
    if meta.is_symlink() or not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _node_type(path: Path) -> str | None:
    """``group``/``array`` for a folder with a ``zarr.json``, ``unknown`` if it is unreadable,
    None without one."""
    meta = path / META
    if meta.is_symlink() or not meta.is_file():
        return None
    kind = (_meta_doc(path) or {}).get("node_type")
    return kind if kind in ("group", "array") else "unknown"


def chunk_grid(path: Path) -> tuple[int, ...] | None:
    """The number of chunk (or shard) files along each axis of the array folder ``path``, from
    its ``zarr.json`` (shape and regular chunk grid, default ``/`` chunk keys), or None when
    that metadata cannot be read so (then any digit name counts, as a damaged array's rest).

    The cache never resizes an array, so a chunk key outside this grid is no file it wrote
    (a user's ``c/9`` beside an array of one shard)."""
    doc = _meta_doc(path) or {}
    try:
        shape = [int(n) for n in doc["shape"]]
        grid = doc["chunk_grid"]
        chunks = [int(n) for n in grid["configuration"]["chunk_shape"]]
        keys = doc.get("chunk_key_encoding", {"name": "default"})
        sep = keys.get("configuration", {}).get("separator", "/")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if grid.get("name") != "regular" or keys.get("name") != "default" or sep != "/":
        return None
    if len(chunks) != len(shape) or any(
        c <= 0 or n < 0 for c, n in zip(chunks, shape, strict=True)
    ):
        return None
    return tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))


def meta_problem(meta: Path) -> str | None:
    """Why the zarr metadata file ``meta`` cannot be read as zarr's (``is not valid JSON (…)``,
    ``is not zarr metadata …``), or None when it can."""
    try:
        doc = json.loads(meta.read_bytes())
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return f"is not valid JSON ({e})"
    if not isinstance(doc, dict) or doc.get("node_type") not in ("group", "array"):
        return "is not zarr metadata (no node_type group or array)"
    if doc.get("zarr_format") != 3:
        return f"is not zarr v3 metadata (zarr_format {doc.get('zarr_format')!r})"
    return None


def damaged_meta(path: Path) -> tuple[Path, str] | None:
    """The first ``zarr.json`` (sorted walk) of the zarr node folder ``path`` or below it that
    cannot be read as zarr metadata, with why; None when all of them can. Only metadata files
    are read: the walk does not enter an array's chunk folder."""
    meta = path / META
    if meta.is_file() and not meta.is_symlink():
        problem = meta_problem(meta)
        if problem is not None:
            return meta, problem
        if _node_type(path) == "array":
            return None
    for p in _entries(path) if path.is_dir() else []:
        if p.is_dir() and not p.is_symlink() and (p / META).is_file():
            found = damaged_meta(p)
            if found is not None:
                return found
    return None


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError as e:
        raise CacheError(
            f"cannot read {path} ({e.strerror})", "check the permissions of the cache folder"
        ) from None


def _foreign_in(path: Path, file_ok: re.Pattern, dirs_ok: bool) -> Path | None:
    """First entry of a chunk (``c/``) or lock folder whose name is not one the cache writes."""
    for p in _entries(path):
        if p.is_symlink():
            return p
        if p.is_dir() and dirs_ok and _CHUNK.match(p.name):
            bad = _foreign_in(p, file_ok, dirs_ok)
            if bad is not None:
                return bad
        elif not (p.is_file() and (file_ok.match(p.name) or _PARTIAL.match(p.name))):
            return p
    return None


def _foreign_chunk(path: Path, grid: tuple[int, ...]) -> Path | None:
    """First entry of the chunk folder ``path`` (an array's ``c/`` or a folder below it, with
    ``grid`` the chunk counts of the axes still to name) that is no chunk key inside the
    array's grid (:func:`chunk_grid`) nor zarr's temporary of one."""
    for p in _entries(path):
        if p.is_symlink():
            return p
        inside = _CHUNK.match(p.name) is not None and bool(grid) and int(p.name) < grid[0]
        if p.is_dir() and inside and len(grid) > 1:
            bad = _foreign_chunk(p, grid[1:])
            if bad is not None:
                return bad
        elif not (p.is_file() and ((inside and len(grid) == 1) or _PARTIAL.match(p.name))):
            return p
    return None


#: seconds a ``zarr.<hex>.partial`` must be old before it is taken for a killed write's: some
#: metadata writes (a group's finishing attributes) happen outside the writer lock; a live one
#: renames its temporary within milliseconds. Chunk temporaries are only written under it.
META_PARTIAL_AGE = 10.0


def partial_leftovers(folder: Path, now: float | None = None) -> list[Path]:
    """The temporaries (``_PARTIAL``: ``zarr|c|<digits>.<32 hex>.partial``) that killed zarr
    writes left below the entry folder ``folder`` (not its ``.removing``, which `cache rm`
    finishes; links are not followed). Only names of that pattern, only plain files. The caller
    holds the entry against writers (``creation.writers_out``): a writer renames its own at
    once. A metadata temporary younger than ``META_PARTIAL_AGE`` (``now``: time.time()) is left
    out: it may belong to a live write outside the lock."""
    import time

    now = time.time() if now is None else now
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != TRASH)  # os.walk follows no links
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not _PARTIAL.match(name) or p.is_symlink() or not p.is_file():
                continue
            if name.startswith("zarr.") and now - p.stat().st_mtime < META_PARTIAL_AGE:
                continue
            found.append(p)
    return found


def sweep_partials(folder: Path, found: list[Path] | None = None) -> list[Path]:
    """Delete ``found`` (default ``partial_leftovers(folder)``: pass what the caller listed
    under the same hold of the entry against writers); returns what was deleted. One that
    vanished meanwhile is skipped."""
    gone = []
    for p in partial_leftovers(folder) if found is None else found:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            gone.append(p)
    return gone


def _leftover(path: Path) -> bool:
    """A folder without ``zarr.json`` holding nothing but zarr's temporaries (or nothing): what a
    writer killed between making the folder and renaming its first file leaves."""
    return all(
        p.is_file() and not p.is_symlink() and _PARTIAL.match(p.name) for p in _entries(path)
    )


def _holds_done(path: Path, depth: int = 1) -> bool:
    """Whether the folder ``path`` holds a ``done`` array with readable metadata, or (a
    ``latents/``-like folder) a group that does: every group the cache writes does (an entry,
    a features, latents, triplets or text group), so a node of its whose own ``zarr.json`` was
    damaged is still told from a user's folder."""
    if _node_type(path / "done") == "array":
        return True
    return depth > 0 and any(
        p.is_dir() and not p.is_symlink() and _holds_done(p, depth - 1) for p in _entries(path)
    )


def _attrs_empty(path: Path) -> bool:
    """A group whose metadata holds no attributes: the cache's root and its ``features/``,
    ``latents/``, ``triplets/``, ``text/`` folders, which hold groups and no array."""
    return not (_meta_doc(path) or {}).get("attributes")


def _foreign_child(parent: Path, kind: str | None, p: Path) -> Path | None:
    """The first foreign path at or below ``p``, a child folder of the zarr node ``parent``
    (of node type ``kind``) that is no array's chunk or lock folder."""
    child = _node_type(p)
    if kind == "array" or child is None:
        if kind == "group" and p.name == TRASH:
            return _foreign_in_trash(p)
        return None if _leftover(p) else p
    if child == "unknown" and not _holds_done(p):
        return p  # a `zarr.json` that is no zarr metadata, in a folder of none of its groups
    if kind == "group" and child == "array" and _attrs_empty(parent):
        return p  # the root and `latents/`-like folders hold groups only
    if kind == "group" and child == "group" and not _attrs_empty(parent) and not _attrs_empty(p):
        return p  # an entry or data group holds arrays and `latents/`-like folders only
    return foreign_path(p)


def foreign_path(path: Path) -> Path | None:
    """The first path (sorted walk) below the zarr node folder ``path`` that the cache did not
    write, or None when all of it is the cache's own.

    Exact where the metadata tells: an array's chunk keys lie inside its chunk grid
    (:func:`chunk_grid`); the root and the ``features/``-like folders (no attributes) hold
    groups only, an entry or data group arrays and such folders; a ``zarr.json`` that is no
    zarr metadata counts as the cache's only in a folder that holds a ``done`` array (a group
    of its whose metadata was damaged, which `cache rm` must still remove)."""
    kind = _node_type(path)
    grid = chunk_grid(path) if kind == "array" else None
    for p in _entries(path):
        name = p.name
        if p.is_symlink():
            return p
        if p.is_file():
            scalar = kind != "group" and name == "c" and (grid is None or grid == ())
            if not (name == META or _PARTIAL.match(name) or scalar):
                return p
            continue
        if not p.is_dir():  # a socket, a fifo, a device
            return p
        if kind != "group" and name == "c":
            bad = _foreign_in(p, _CHUNK, dirs_ok=True) if grid is None else _foreign_chunk(p, grid)
        elif kind != "group" and name == "locks":
            bad = _foreign_in(p, _LOCK, dirs_ok=False)
        else:
            bad = _foreign_child(path, kind, p)
        if bad is not None:
            return bad
    return None


def _foreign_in_trash(trash: Path) -> Path | None:
    """The first path in a group's ``.removing`` folder that the cache did not put there: each
    entry is the rest of a removal, a folder holding only names the cache writes
    (:func:`foreign_in_rest`; a link, even one an older `cache rm` moved there, is not)."""
    for rest in _entries(trash):
        if rest.is_symlink() or not rest.is_dir():
            return rest
        bad = foreign_in_rest(rest)
        if bad is not None:
            return bad
    return None


def refuse_link(path: Path, what: str, original: Path | None = None) -> None:
    """A ``CacheError`` when ``path`` (``what``: a group about to be moved out or deleted) is a
    link: the cache writes no links, and removes neither a link nor what it points to.
    ``original``: where the link ``path`` in ``.removing`` was before a `cache rm` of a version
    that did not refuse links moved it there (and then failed); it is named, not deleted."""
    if not path.is_symlink():
        return
    try:
        target = os.readlink(path)
    except OSError as e:
        target = f"(unreadable: {e.strerror})"
    if original is None:
        raise CacheError(
            f"{what} {path} is a link to {target}, which `cache rm` does not follow; nothing "
            "was removed",
            f"remove the link yourself (`rm {path}`), and {target} too if you meant to delete "
            "it; the cache touched neither",
        )
    raise CacheError(
        f"{path} is a link to {target} that an older `cache rm` moved there and could not "
        "delete (`cache rm` does not follow links); nothing was removed",
        f"remove the link yourself (`rm {path}`) or move it back (`mv {path} {original}`), then "
        f"run the command again; {target} was not touched",
    )


def trash_for(group: zarr.Group, name: str) -> Path | None:
    """Where the child ``name`` of the local ``group`` goes to be deleted:
    ``<root>/.removing/<path with @ for />`` (None on a URL store)."""
    store = group.store_path.store
    if not isinstance(store, LocalStore):
        return None
    path = f"{group.store_path.path}/{name}".strip("/")
    return Path(store.root) / TRASH / path.replace("/", "@")


def move_out(group: zarr.Group, name: str) -> Path | None:
    """Move the child ``name`` of ``group`` out of the cache's tree to its ``trash_for`` place,
    replacing what an earlier removal of the same group, killed, left there: from here on no
    reader or writer takes it for the group, however far its deletion gets. Returns that place
    (``delete_trash`` deletes it); on a URL store the child is deleted through zarr (None)."""
    trash = trash_for(group, name)
    if trash is None:
        del group[name]
        return None
    drop_trash(group, name)  # checked to be the cache's own first
    refuse_link(group_dir(group) / name, "the cache group")  # type: ignore[operator]
    trash.parent.mkdir(exist_ok=True)
    (group_dir(group) / name).rename(trash)  # type: ignore[operator]  # local: trash_for
    return trash


def delete_trash(trash: Path) -> None:
    """Delete what ``move_out`` moved, and ``.removing`` with it once empty. Another
    process may delete the same rest at the same time (a creation of the group anew)."""
    shutil.rmtree(trash, ignore_errors=True)
    if trash.exists():
        shutil.rmtree(trash)  # what could not be deleted: the error names it
    with contextlib.suppress(OSError):  # another removal's rest is still there
        trash.parent.rmdir()


def drop_trash(group: zarr.Group, name: str) -> bool:
    """Delete the rest that a killed removal of the child ``name`` of ``group`` left (before the
    child is made anew, or by the rerun of that removal); False when there is none."""
    trash = trash_for(group, name)
    if trash is None or not (trash.is_dir() or trash.is_symlink()):
        return False
    refuse_link(trash, "the rest of a removal", group_dir(group) / name)  # type: ignore[operator]
    refuse_foreign_rest(trash)
    delete_trash(trash)
    return True


def foreign_in_rest(path: Path) -> Path | None:
    """The first path (sorted walk) below ``path``, the rest of a killed removal in
    ``.removing``, whose name the cache never writes, or None. Its deletion may have removed any
    ``zarr.json`` already, so node types are not known there: every file must have a name the
    cache writes somewhere (``zarr.json``, ``c``, a chunk number, a shard lock, zarr's
    temporaries), and every folder must hold only such files and folders."""
    for p in _entries(path):
        if p.is_symlink() or not (p.is_dir() or p.is_file()):
            return p
        if p.is_dir():
            bad = foreign_in_rest(p)
            if bad is not None:
                return bad
        elif not any(form.match(p.name) for form in _REST_FILES):
            return p
    return None


def refuse_foreign_rest(trash: Path) -> None:
    """A ``CacheError`` naming the first path in the rest ``trash`` of a killed removal that the
    cache did not write (``foreign_in_rest``): deleting that rest would delete it."""
    if trash.is_symlink():
        bad: Path | None = trash
    else:
        bad = foreign_in_rest(trash)
    if bad is not None:
        raise CacheError(
            f"{trash} holds {bad}, which the cache did not write; nothing was removed",
            f"move {trash} out of the cache folder (it is not the rest of a `cache rm`), then "
            "run the command again",
        )


def refuse_foreign(path: Path, what: str) -> None:
    """A ``CacheError`` naming the first foreign path below ``path`` (about to be removed), or
    saying that ``path`` itself is a link (:func:`refuse_link`)."""
    refuse_link(path, what)
    bad = foreign_path(path)
    if bad is not None:
        raise CacheError(
            f"{what} {path} holds {bad}, which the cache did not write; nothing was removed",
            f"move {bad} out of the cache folder first, then run the command again",
        )


def claim_dir(path: Path) -> None:
    """Refuse to create a group at ``path`` when something that is no zarr node is there."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        cause = "is a link" if path.is_symlink() else "is a file"
    elif _node_type(path) is not None or _leftover(path):
        return
    else:
        cause = f"is a folder that is not part of the cache (no {META} in it)"
    raise CacheError(
        f"{path} {cause}; the cache would create its entry there",
        f"move {path} elsewhere, or use another --cache",
    )
