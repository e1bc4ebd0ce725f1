"""Chunk-level integrity of cache arrays: missing, truncated and corrupt shards/chunks.

New arrays carry zarr v3's ``crc32c`` codec after their other bytes codecs, on each inner chunk
of a shard (the shard index has its own crc32c by default), and every chunk is stored even when
it equals the fill value (``cache.store``). So:

* a shard or chunk file that is absent while rows in it are done is *missing* (zarr would
  silently return the fill value: readers here refuse instead, ``GuardedArray``);
* a shard whose index (at its end) fails its checksum or lies past the file end is *truncated*;
* a chunk whose bytes fail their checksum (or fail to decode) is *corrupt*.

``scan_array`` reads every stored key holding done rows and reports each problem with the rows
it holds; ``repair`` marks those rows pending (``done = 0``, whole shards: writers rewrite whole
shards) so rerunning the producing command rewrites them.

``stored_checksums`` reads the stored crc32c of chunks without decoding them (the shard index,
then the four checksum bytes that end each chunk): a content identity of an array that costs no
pass over its data (``evaluate`` keys reference statistics of a cache entry with it).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import Crc32cCodec
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from repackctl.cache.commands import remove_command
from repackctl.cache.creation import reader_locks, release_readers
from repackctl.cache.ownership import group_dir
from repackctl.cache.versions import RECORD
from repackctl.errors import CacheError

EMPTY = 2**64 - 1  # shard index entry of an absent inner chunk
_KEYS_AT_ONCE = 64  # stored objects whose checksums are read concurrently


@dataclass(frozen=True)
class Damage:
    """One bad stored key of ``array`` (a path inside the entry) and the rows it holds."""

    array: str
    key: str
    kind: str  # missing | truncated | corrupt
    lo: int
    hi: int

    def __str__(self) -> str:
        rows = f"rows {self.lo}–{self.hi - 1}" if self.hi > self.lo else "not sample-indexed"
        return f"{self.array}: {self.kind} chunk {self.key} ({rows})"


def rows_per_key(arr: zarr.Array) -> int:
    """Rows (first axis) held by one stored object: a shard, or a chunk when unsharded."""
    return int((arr.shards or arr.chunks)[0])


def store_key(arr: zarr.Array, k: int) -> str:
    """The store key of the ``k``-th shard (or chunk) along the first axis."""
    coords = (k,) + (0,) * (arr.ndim - 1)
    key = arr.metadata.encode_chunk_key(coords)
    prefix = arr.store_path.path
    return f"{prefix}/{key}" if prefix else key


def key_exists(arr: zarr.Array, k: int) -> bool:
    return bool(sync(arr.store_path.store.exists(store_key(arr, k))))


def _get(arr: zarr.Array, k: int) -> bytes | None:
    buf = sync(arr.store_path.store.get(store_key(arr, k), prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _needed_keys(arr: zarr.Array, required: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(k, lo, hi) of the stored objects holding at least one required row."""
    step = rows_per_key(arr)
    for k, lo in enumerate(range(0, arr.shape[0], step)):
        hi = min(lo + step, arr.shape[0])
        if required[lo:hi].any():
            yield k, lo, hi


def _shard_problem(arr: zarr.Array, data: bytes, lo: int, required: np.ndarray) -> str | None:
    """``truncated`` / ``missing`` (an inner chunk) from the shard index, else None."""
    inner = int(arr.chunks[0])
    count = -(-int(arr.shards[0]) // inner)
    size = count * 16 + 4
    if len(data) < size:
        return "truncated"
    index = data[-size:]
    if google_crc32c.value(index[:-4]) != int.from_bytes(index[-4:], "little"):
        return "truncated"
    table = np.frombuffer(index[:-4], dtype="<u8").reshape(count, 2)
    for j, (offset, nbytes) in enumerate(table.tolist()):
        rows = required[lo + j * inner : lo + (j + 1) * inner]
        if offset == EMPTY:
            if rows.any():
                return "missing"
        elif offset + nbytes > len(data) - size:
            return "truncated"
    return None


def scan_array(arr: zarr.Array, required: np.ndarray, name: str) -> list[Damage]:
    """Read every stored object of ``arr`` holding a ``required`` row; report the bad ones."""
    damage = []
    for k, lo, hi in _needed_keys(arr, required):
        key = store_key(arr, k).rsplit("/c/", 1)[-1]
        data = _get(arr, k)
        kind = "missing" if data is None else None
        if kind is None and arr.shards is not None:
            kind = _shard_problem(arr, data, lo, required)
        if kind is None:
            try:
                arr[lo:hi]
            except Exception:  # checksum mismatch or undecodable bytes
                kind = "corrupt"
        if kind:
            damage.append(Damage(name, f"c/{key}", kind, lo, hi))
    return damage


def read_done(done: zarr.Array, name: str) -> tuple[np.ndarray, list[Damage]]:
    """A ``done`` array, chunk by chunk; an unreadable chunk counts as pending (and is reported)."""
    out = np.zeros(done.shape, np.uint8)
    damage = []
    step = rows_per_key(done)
    for k, lo in enumerate(range(0, done.shape[0], step)):
        hi = min(lo + step, done.shape[0])
        try:
            out[lo:hi] = done[lo:hi]
        except Exception:
            key = store_key(done, k).rsplit("/c/", 1)[-1]
            damage.append(Damage(name, f"c/{key}", "corrupt", lo, hi))
    return out, damage


class GuardedArray:
    """A read-only view of a sample-indexed array that never turns a lost chunk into zeros.

    Before a read it checks, once per stored object, that every shard/chunk holding a
    ``required`` row exists; a read that fails its checksum becomes a ``CacheError``. Both
    errors name ``label`` and the repair command ``hint``. While the view lives, it holds its
    group against `cache rm` and `cache verify --repair` (``creation.reader_locks``).
    """

    def __init__(self, array: zarr.Array, required: np.ndarray, label: str, hint: str) -> None:
        locks = reader_locks(array, label) if isinstance(array, zarr.Array) else []
        weakref.finalize(self, release_readers, locks)
        self.array = array
        self.required = np.asarray(required, bool)
        self.label = label
        self.hint = hint
        self._step = rows_per_key(array)
        self._checked: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.array, name)

    def _keys(self, first: Any) -> list[int]:
        n = self.array.shape[0]
        if first is Ellipsis:
            first = slice(None)
        if isinstance(first, slice):
            r = range(n)[first]
            if len(r) == 0:
                return []
            lo, hi = min(r[0], r[-1]), max(r[0], r[-1])
            return list(range(lo // self._step, hi // self._step + 1))
        if isinstance(first, (int, np.integer)):
            return [int(range(n)[int(first)]) // self._step]
        rows = np.asarray(first)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return np.unique((rows % n) // self._step).tolist()

    def _check(self, first: Any) -> None:
        for k in self._keys(first):
            if k in self._checked:
                continue
            lo = k * self._step
            hi = min(lo + self._step, self.array.shape[0])
            if self.required[lo:hi].any() and not key_exists(self.array, k):
                raise CacheError(
                    f"{self.label}: chunk {store_key(self.array, k)} holding done rows "
                    f"{lo}–{hi - 1} is missing",
                    self.hint,
                )
            self._checked.add(k)

    def _read(self, fn: Any, key: Any) -> np.ndarray:
        try:
            return fn(key)
        except CacheError:
            raise
        except Exception as e:
            raise CacheError(f"{self.label}: corrupt or truncated chunk ({e})", self.hint) from e

    def __getitem__(self, key: Any) -> np.ndarray:
        self._check(key[0] if isinstance(key, tuple) else key)
        return self._read(self.array.__getitem__, key)

    @property
    def oindex(self) -> Any:
        guard = self

        class _O:
            def __getitem__(self, key: Any) -> np.ndarray:
                guard._check(key[0] if isinstance(key, tuple) else key)
                return guard._read(guard.array.oindex.__getitem__, key)

        return _O()


def repair_hint(entry: str, producer: str) -> str:
    """The two commands that rewrite damaged rows."""
    return f"run `repackctl cache verify {entry} --repair`, then {producer} again"


# --------------------------------------------------------------------------- stored checksums
def _checksummed_layout(arr: zarr.Array) -> bool:
    """Whether every stored chunk of ``arr`` ends with its crc32c, chunks span whole rows, and
    (sharded) the shard index sits at the end under its own crc32c."""
    whole_rows = all(
        tuple(s[1:]) == tuple(arr.shape[1:]) for s in (arr.chunks, arr.shards or arr.chunks)
    )
    codecs = arr.metadata.codecs
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        return (
            whole_rows
            and isinstance(sharding.codecs[-1], Crc32cCodec)
            and isinstance(sharding.index_codecs[-1], Crc32cCodec)
            and sharding.index_location == ShardingCodecIndexLocation.end
        )
    return whole_rows and bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


async def _read(store: Any, key: str, byte_range: Any) -> bytes | None:
    buf = await store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range)
    return None if buf is None else buf.to_bytes()


async def _shard_checksums(
    arr: zarr.Array, k: int, lo: int, needed: np.ndarray
) -> list[tuple[int, int, int]] | None:
    """(first row, stored bytes, crc32c) of the needed inner chunks of shard ``k``, or None."""
    store, key = arr.store_path.store, store_key(arr, k)
    inner = int(arr.chunks[0])
    count = -(-int(arr.shards[0]) // inner)
    size = count * 16 + 4
    try:
        total = await store.getsize(key)
    except FileNotFoundError:
        return None
    index = await _read(store, key, SuffixByteRequest(size))
    if index is None or len(index) != size or total < size:
        return None
    if google_crc32c.value(index[:-4]) != int.from_bytes(index[-4:], "little"):
        return None
    table = np.frombuffer(index[:-4], dtype="<u8").reshape(count, 2).tolist()
    wanted = [
        (lo + j * inner, offset, nbytes)
        for j, (offset, nbytes) in enumerate(table)
        if needed[lo + j * inner : lo + (j + 1) * inner].any()
    ]
    if any(off == EMPTY or nb < 4 or off + nb > total - size for _, off, nb in wanted):
        return None  # a chunk without a stored checksum (absent), or an index past the file
    tails = await asyncio.gather(
        *(_read(store, key, RangeByteRequest(off + nb - 4, off + nb)) for _, off, nb in wanted)
    )
    if any(t is None or len(t) != 4 for t in tails):
        return None
    return [
        (row, nb, int.from_bytes(t, "little"))
        for (row, _, nb), t in zip(wanted, tails, strict=True)
    ]


async def _chunk_checksum(arr: zarr.Array, k: int, lo: int) -> list[tuple[int, int, int]] | None:
    """(first row, stored bytes, crc32c) of the unsharded chunk ``k``, or None when absent."""
    store, key = arr.store_path.store, store_key(arr, k)
    try:
        total = await store.getsize(key)
    except FileNotFoundError:
        return None
    tail = await _read(store, key, SuffixByteRequest(4))
    if tail is None or len(tail) != 4 or total < 4:
        return None
    return [(lo, total, int.from_bytes(tail, "little"))]


def stored_checksums(arr: zarr.Array, rows: np.ndarray) -> list[tuple[int, int, int]] | None:
    """(first row, stored bytes, crc32c) of every stored chunk holding one of ``rows``, in row
    order, read without decoding a chunk: the shard index (checked against its own crc32c),
    then the four checksum bytes that end each chunk.

    None when some chunk holding a row has no stored checksum to read: an array without the
    crc32c codec (made before it, ``store.checksummed``), a shard or chunk that is absent, or
    a shard index that fails its checksum or points past the file. Callers then read the data.

    A chunk's data change only when zarr rewrites it, which stores the crc32c of its new
    bytes; a damaged chunk keeps its old checksum but fails it on every read, so its data is
    never used. The checksums therefore change with the data (a 32-bit checksum: a rewrite
    that keeps it has a chance of 2^-32, and must also keep the chunk's stored size).
    """
    if not _checksummed_layout(arr):
        return None
    needed = np.zeros(arr.shape[0], bool)
    needed[np.asarray(rows, dtype=np.int64)] = True
    keys = [(k, lo) for k, lo, _ in _needed_keys(arr, needed)]

    async def gather(batch: list[tuple[int, int]]) -> list[list[tuple[int, int, int]] | None]:
        if arr.shards is not None:
            return await asyncio.gather(*(_shard_checksums(arr, k, lo, needed) for k, lo in batch))
        return await asyncio.gather(*(_chunk_checksum(arr, k, lo) for k, lo in batch))

    out: list[tuple[int, int, int]] = []
    for start in range(0, len(keys), _KEYS_AT_ONCE):
        for part in sync(gather(keys[start : start + _KEYS_AT_ONCE])):
            if part is None:
                return None
            out += part
    return out


# --------------------------------------------------------------------------- checksum codecs
#: False while `cache ls` / `cache verify` open what they report themselves
_CHECK_METADATA: ContextVar[bool] = ContextVar("check_metadata", default=True)


def metadata_checked() -> bool:
    """Whether readers refuse edited metadata now (an array that lost its checksum codec,
    ``checked_array``; a features group whose recorded weights digest is not its id's,
    ``store.DatasetEntry.features``): always, except under :func:`metadata_unchecked`."""
    return _CHECK_METADATA.get()


@contextmanager
def metadata_unchecked() -> Iterator[None]:
    """Open arrays and groups without the refusals of edited metadata (``metadata_checked``):
    for the listing and the verify that name such arrays and groups instead of stopping."""
    token = _CHECK_METADATA.set(False)
    try:
        yield
    finally:
        _CHECK_METADATA.reset(token)


def has_checksum_codec(arr: zarr.Array) -> bool:
    """Whether each stored chunk of ``arr`` is checked against a crc32c on reading: the
    ``crc32c`` codec ends its bytes codecs (a sharded array's inner chunks and its index)."""
    codecs = arr.metadata.codecs
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        return bool(sharding.codecs) and isinstance(sharding.codecs[-1], Crc32cCodec)
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


def lost_checksums(group: zarr.Group) -> list[str]:
    """The arrays of ``group`` (its direct children) without the crc32c codec although the
    version that wrote the group gave one to every array: the group records the package
    versions it was written under (recorded since after checksums came), or another of its
    arrays has the codec. Such an array's ``zarr.json`` was edited: zarr then reads its chunks
    unchecked (the stored checksum is taken as data, or ignored). Arrays of a group made before
    checksums (none has one, nothing recorded) are read as before."""
    arrays = list(group.arrays())
    bare = [name for name, arr in arrays if not has_checksum_codec(arr)]
    if bare and (RECORD in group.attrs or len(bare) < len(arrays)):
        return bare
    return []


def lost_checksum_fix(group: zarr.Group, name: str) -> str:
    """How to mend the array ``name`` of ``group`` that lost its checksum codec: its
    ``zarr.json`` from a copy, or remove what holds it and make it again."""
    entry, *rest = group.path.split("/")
    kind, gid = (rest[0], rest[1]) if len(rest) >= 2 else (None, None)
    folder = group_dir(group)
    meta = f"{folder / name / 'zarr.json'}" if folder is not None else f"{group.path}/{name}"
    return (
        f"restore {meta} from a copy of the cache (its codecs end with crc32c), or remove it "
        f"with `{remove_command(entry, kind, gid, yes=True)}` and make it again"
    )


def lost_checksum_text(group: zarr.Group, name: str) -> str:
    """What is wrong with the array ``name`` of ``group`` that lost its checksum codec, named by
    its path inside its cache entry (as `cache verify` lists it after the entry's name)."""
    inner = "/".join([*group.path.split("/")[1:], name])
    return (
        f"{inner}: its zarr.json lacks the crc32c checksum codec that the cache writes on every "
        "array of its group (metadata edited): its chunks would be read unchecked"
    )


def checked_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``, refused (``CacheError`` naming it) when it lost the
    crc32c codec the cache writes (``lost_checksums``): its data would be read unchecked, a
    damaged chunk taken for data. The check costs nothing for an array with the codec."""
    arr = group[name]
    if _CHECK_METADATA.get() and not has_checksum_codec(arr) and name in lost_checksums(group):
        entry = group.path.split("/")[0]
        raise CacheError(
            f"cache entry {entry}: {lost_checksum_text(group, name)}; nothing was read",
            lost_checksum_fix(group, name),
        )
    return arr
