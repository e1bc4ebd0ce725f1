"""`repackctl extract`: images → cache entry with frozen-encoder tokens of both flips.

Work is split into shard-aligned sample ranges (``cache.store.owned_ranges``); each process owns
whole shards, so several processes (``torchrun``/``accelerate launch``) never write into the same
shard (zarr 3 loses data otherwise, environment.md). A shard is encoded in batches that never cross
its boundary (so the numbers do not depend on the number of processes), buffered, written, and only
then marked done: a process killed at any moment loses at most the shard it was on, and a rerun
continues with the first shard that is not done. Images are decoded in DataLoader workers; those
the entry already holds (another encoder's extract wrote them) are read back, not decoded again.
The features shards are locked per features group, the image shards per entry (``_write_images``):
extracts of two encoders at once write each image shard once.

Three things overlap so the encoder is rarely idle (``repackctl benchmark extract`` measures the
ratio to the bare forward): on a GPU the next batch is decoded in a background thread
(``_prefetched``; with ``num_workers = 0`` that thread does the decoding itself), features are
converted to float16 on the encoder's device, and a complete shard is written by a writer thread
while the next shard is encoded (``_ShardWriter``; at most one shard in flight, data before
``done`` as before). The bytes written do not change.

The counts ``run_extract`` returns (and the CLI prints: written now, already done) are summed over
the processes: each one knows only its own shards, and rank 0's share is not the job's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from repackctl.cache.commands import remove_command
from repackctl.cache.creation import ShardLocks, entry_writer, test_delay
from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.listing import (
    NO_FILE,
    changed_files,
    check_files,
    check_listing,
    fingerprint_row,
)
from repackctl.cache.store import (
    PENDING,
    SKIP_REASONS,
    WRITTEN,
    ArrayGroup,
    DatasetEntry,
    check_layout,
    list_entries,
    owned_ranges,
    reason_code,
    update_changed,
)
from repackctl.crash import crash_point
from repackctl.data.base import BadImage, ImageSource, source_packages
from repackctl.data.builtin import BuiltinSource
from repackctl.data.builtin import check_resolution as check_builtin_resolution
from repackctl.data.sources import dataset_label, default_resolution, make_source
from repackctl.encoders.load import make_encoder
from repackctl.errors import CacheError, ConfigError, DataError, name_items
from repackctl.files import die_with_parent
from repackctl.paths import entry_name
from repackctl.progress import ProgressBar, ProgressFactory, null_progress
from repackctl.runtime import (
    DistInfo,
    amp_autocast,
    check_precision,
    header_line,
    resolve_device,
    run_header,
)
from repackctl.settings import Settings


@dataclass
class ExtractResult:
    """What an extraction did, for the CLI to render."""

    entry: str
    features: str
    n: int
    written: int
    already_done: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: (key, message) of warnings raised while decoding (e.g. PIL's decompression-bomb warning)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    resolution: int = 0
    tokens_shape: tuple[int, ...] = ()
    precision: str = "fp32"

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


class _Items(Dataset):
    """Decodes source items in DataLoader workers; a bad item comes back with its skip code.

    Items whose ``recorded`` flag is set (the entry holds their pixels or their skip) are not
    decoded: they come back black, without a warning, and the caller uses the entry's record.

    A source that reads files (``read_file(i)`` and ``decode(data, resolution)``: an image
    folder) is read once per item: the bytes are decoded, and their fingerprint (size, mtime,
    sha256; ``NO_FILE`` for other sources and unreadable files) comes back with the item; the
    writer records it for the images it writes (``cache.listing.check_files``).
    """

    def __init__(
        self, source: ImageSource, resolution: int, recorded: np.ndarray | None = None
    ) -> None:
        self.source = source
        self.resolution = resolution
        self.recorded = recorded

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, int, int, str, str, np.ndarray]:
        r = self.resolution
        label, key = self.source.label(i), self.source.key(i)
        if self.recorded is not None and self.recorded[i]:
            return i, np.zeros((r, r, 3), np.uint8), WRITTEN, label, key, "", NO_FILE
        # warnings (PIL's DecompressionBombWarning, bad EXIF…) come back with the item and are
        # printed as the tool's own warning lines, not raw from a worker process
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data, fingerprint = self._read(i)
            try:
                img = self.source.load(i, r) if data is None else self.source.decode(data, r)
                if img.shape != (r, r, 3) or img.dtype != np.uint8:
                    raise BadImage(f"source returned {img.shape} {img.dtype}")
                code = WRITTEN
                if fingerprint is None:  # a large file, decoded from its path: hashed now
                    fingerprint = self._hashed(i)
            except BadImage as e:
                img, code = np.zeros((r, r, 3), np.uint8), reason_code(str(e))
        note = "; ".join(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        return i, img, code, label, key, note, NO_FILE if fingerprint is None else fingerprint

    def _read(self, i: int) -> tuple[bytes | None, np.ndarray | None]:
        """Item ``i``'s file bytes and their fingerprint row; (None, ``NO_FILE``) for a source
        without files, or a file that cannot be read (``load`` then says why: its skip);
        (None, None) for a file too large to read whole (hashed once it decoded)."""
        read = getattr(self.source, "read_file", None)
        if read is None:
            return None, NO_FILE
        try:
            got = read(i)
        except OSError:
            return None, NO_FILE
        if got.data is None:
            return None, None
        return got.data, fingerprint_row(got.size, got.mtime_ns, got.sha256)

    def _hashed(self, i: int) -> np.ndarray:
        """The fingerprint row of item ``i``'s file hashed in blocks (``NO_FILE`` if it cannot
        be read now)."""
        try:
            got = self.source.hash_file(i)
        except OSError:
            return NO_FILE
        return fingerprint_row(got.size, got.mtime_ns, got.sha256)


def _collate(items: list) -> tuple:
    idx, imgs, codes, labels, keys, notes, prints = zip(*items, strict=True)
    arrays = np.array(idx), np.stack(imgs), np.array(codes), np.array(labels)
    return (*arrays, list(keys), list(notes), np.stack(prints))


def _die_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker is killed when the process that started it dies
    (:func:`repackctl.files.die_with_parent`).

    Without it, a SIGKILLed ``extract`` leaves its workers behind for good: they stop taking
    work, but each then waits forever to flush its result queue into a pipe nobody reads.
    The signal is tied to the thread that forked the worker, so loaders are iterated from a
    thread that outlives them (``_prefetched`` creates the iterator in its caller's thread).
    """
    die_with_parent(parent)


def _loader(
    source: ImageSource,
    resolution: int,
    batches: Any,
    workers: int,
    recorded: np.ndarray | None = None,
) -> DataLoader:
    """Decoded batches of ``source``; items flagged in ``recorded`` are not decoded (``_Items``)."""
    return DataLoader(
        _Items(source, resolution, recorded),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if workers else None,
    )


def _prefetched(loader: Any, depth: int = 2) -> Iterator[Any]:
    """Iterate ``loader`` in a background thread, ``depth`` items ahead.

    Exceptions of the loader are raised here; leaving the loop early stops the thread. The
    iterator (and so the loader's worker processes) is made in the caller's thread: workers die
    with the thread that started them (``_die_with_parent``), and this thread may end first.
    """
    source = iter(loader)
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put((None, item)):
                    return
            put((None, end))
        except BaseException as e:  # handed to the consumer, raised there
            put((e, None))

    thread = threading.Thread(target=work, name="extract-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            error, item = items.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        # a thread stuck in the loader is not waited for long (it is a daemon; the locks it may
        # still take are released with the process)
        thread.join(timeout=10)


def _batches(ranges: list[range], batch: int) -> list[list[int]]:
    """Batches that never cross a shard boundary (same numbers for any process count)."""
    out = []
    for r in ranges:
        idx = list(r)
        out += [idx[i : i + batch] for i in range(0, len(idx), batch)]
    return out


class _ShardBatches:
    """Batches of the pending shards this process takes, each under its shard lock.

    A shard is taken only if its lock is free and it is still pending once locked; a shard that
    another process holds is deferred (``deferred``), never waited for while iterating: the
    DataLoader asks for batches ahead, in the thread that hands this process's last shard to the
    writer, whose lock is released only once it is written. A wait there deadlocks with another
    process doing the same (each holds its last shard and waits on the other's). So the deferred
    shards are waited for by ``_encode_pending`` once this process holds none (``wait_for``),
    and done here only if they are still pending then (their holder died). Two ``extract``
    processes on one entry thus share the shards, and the entry is complete when either
    finishes. The lock of a shard is released by the writer once the shard is marked done
    (``release``).
    """

    def __init__(
        self, pending: list[range], shard: int, batch: int, locks: ShardLocks, done: Any
    ) -> None:
        self.pending, self.shard, self.batch = pending, shard, batch
        self.locks, self.done = locks, done
        self.taken: list[range] = []
        self.deferred: list[range] = []
        self.by_others = 0

    def _key(self, r: range) -> int:
        return r.start // self.shard

    def _take(self, r: range) -> bool:
        if (np.asarray(self.done[r.start : r.stop]) == PENDING).any():  # a fresh read
            self.taken.append(r)
            test_delay()
            return True
        self.locks.release(self._key(r))
        self.by_others += 1
        return False

    def __iter__(self):
        self.deferred = []
        for r in self.pending:
            if not self.locks.try_acquire(self._key(r)):
                self.deferred.append(r)  # held by another process: waited for later
            elif self._take(r):
                yield from _batches([r], self.batch)

    def wait_for(self, r: range) -> list[list[int]]:
        """Wait for the lock of deferred shard ``r``; its batches (the lock kept, for the
        writer to release) if it is still pending then, else none (released).

        Call it only while this process holds no shard lock: the holder may be waiting for one.
        """
        self.locks.acquire(self._key(r))
        return _batches([r], self.batch) if self._take(r) else []


def _check_keys(source: ImageSource) -> None:
    """Every key must be storable (valid Unicode) — checked before anything is encoded."""
    for i in range(len(source)):
        key = source.key(i)
        try:
            key.encode("utf-8")
        except (UnicodeEncodeError, AttributeError):
            raise DataError(
                f"item {i} of {source.name} has the key {key!r}, which is not valid Unicode "
                "and cannot be stored in the cache",
                "the source must escape undecodable file names "
                "(repackctl.data.imagefolder.escape_name does it losslessly)",
            ) from None


def _strict_check(
    cache: str,
    name: str,
    source: ImageSource,
    resolution: int,
    ranges: list[range],
    workers: int,
    dist: DistInfo,
) -> None:
    """``--strict``, the same for a new and an existing entry, before anything is written.

    Fails on inputs the source could not list, on any input of a shard still to do that does
    not decode, and on skips an existing entry already recorded. Those are named apart: an
    extract never retries a recorded skip (``_recorded_skips_note``), so the file may read by
    now, and fixing it does not include it; removing the entry does.
    """
    bad = [f"{k} ({r})" for k, r in getattr(source, "skipped", [])]
    recorded: list[str] = []
    todo = ranges
    if name in list_entries(cache):
        entry = DatasetEntry.open(cache, name)
        if entry.n == len(source):  # otherwise opening it fails later with both specs
            codes = entry.done_mask()  # a corrupt chunk: an error naming it, not a traceback
            rows = [i for r in ranges for i in r if codes[i] not in (PENDING, WRITTEN)]
            keys = entry.keys[np.array(rows)] if rows else []
            recorded = [
                f"{k} ({SKIP_REASONS[int(codes[i])]})" for k, i in zip(keys, rows, strict=True)
            ]
            todo = [r for r in ranges if (codes[r.start : r.stop] == PENDING).any()]
    batches = _batches(todo, 64)
    for idx, _, codes, _, keys, _, _ in _loader(source, resolution, batches, workers):
        for _i, c, k in zip(idx, codes, keys, strict=True):
            if c != WRITTEN:
                bad.append(f"{k} ({SKIP_REASONS[int(c)]})")
    unreadable, kept = dist.all_sum(len(bad)), dist.all_sum(len(recorded))
    if unreadable or kept:
        raise DataError(*_strict_refusal(name, (unreadable, bad), (kept, recorded)))


def _strict_refusal(
    name: str, bad: tuple[int, list[str]], recorded: tuple[int, list[str]]
) -> tuple[str, str]:
    """The message and hint of ``--strict``'s refusal: ``bad`` inputs that do not read now,
    and the skips entry ``name`` ``recorded`` (each: the job's count, this process's names)."""

    def listed(names: list[str]) -> str:
        return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")

    parts, hints = [], []
    if bad[0]:
        parts.append(f"{bad[0]} unreadable input(s): {listed(bad[1])}")
        hints.append("remove or fix those files, or run without --strict to skip and record them")
    if recorded[0]:
        parts.append(
            f"cache entry {name} recorded {recorded[0]} input(s) as skipped when an earlier "
            f"extract read them: {listed(recorded[1])}"
        )
        hints.append(
            "an extract never retries a recorded skip, even if the file reads now: to include "
            f"them, make sure they read, then remove the entry with `{remove_command(name)}` "
            "and extract again (or run without --strict to keep them skipped)"
        )
    return f"--strict: {'; '.join(parts)}; nothing written", "; ".join(hints)


def _check_held_out_disjoint(cache: str, name: str, source: ImageSource) -> None:
    """Refuse a held-out split (``--val-fraction``) that shares files with the entry of the
    other split of the same folder, before anything is written.

    Both splits are drawn from one seeded permutation of each class's listing, so they are
    disjoint only if the folder lists the same files for both extracts: a file added, removed
    or renamed in between changes the permutation, and the two entries (same fraction and seed,
    which the cache checks) would silently share images (a validation set that leaks into
    training). The recorded keys of the other split's entry are compared with this listing.
    """
    src = source.describe()
    root, split = src.get("root"), source.split
    if not src.get("held_out") or not root:
        return
    ours: set[str] | None = None
    for other in list_entries(cache):
        if other == name:
            continue
        entry = DatasetEntry.open(cache, other)
        attrs = entry.attrs
        theirs = attrs.get("source") or {}
        if theirs.get("root") != root or attrs.get("split") == split:
            continue
        if _fraction_seed(theirs.get("held_out")) != _fraction_seed(src["held_out"]):
            continue  # another fraction or seed: the cache's refusal names both (check_held_out)
        recorded = entry.done_mask() != PENDING
        keys = np.asarray(entry.keys[:])[recorded]
        if ours is None:
            ours = {source.key(i) for i in range(len(source))}
        shared = sorted(ours.intersection(str(k) for k in keys))
        if shared:
            listed = name_items(shared, 3)
            raise DataError(
                f"split {split!r} of {root} would share {len(shared)} file(s) with cache entry "
                f"{other} (split {attrs.get('split')!r}): {listed}. The folder changed since "
                f"{other} was extracted (files added, removed or renamed), so the seeded "
                "--val-fraction split no longer keeps the two apart",
                f"restore the folder as it was, or remove the entries of both splits "
                f"(`{remove_command(other)}`, and {name} if it exists) and extract both "
                "again with the same --val-fraction and --seed",
            )


def _fraction_seed(held: dict | None) -> tuple | None:
    return None if not isinstance(held, dict) else (held.get("fraction"), held.get("seed"))


def _check_resolution(resolution: int) -> None:
    """Reject resolutions the pipeline cannot handle."""
    if resolution % 8 or resolution < 16:
        raise ConfigError(
            f"resolution {resolution} is not supported", "use a multiple of 8 such as 64 or 256"
        )


def _check_source_resolution(source: ImageSource, resolution: int) -> None:
    """The source's own resolution limits (the built-in renderer draws 32–256 px), checked before
    any entry exists: a source that refuses the size in a decoding worker would leave an empty
    entry and a worker traceback behind. A source states its limits with ``check_resolution``."""
    check = getattr(source, "check_resolution", None)
    if check is None and isinstance(source, BuiltinSource):
        check = check_builtin_resolution
    if callable(check):
        check(resolution)


def _check_patch(resolution: int, patch_size: int) -> None:
    """Reject a resolution that the encoder's patch size does not divide."""
    if resolution % patch_size and patch_size != 14:
        raise ConfigError(
            f"resolution {resolution} is not a multiple of the patch size {patch_size}",
            f"use a multiple of {patch_size}",
        )


def _open_entry(
    settings: Settings,
    source: ImageSource,
    dataset: str,
    resolution: int,
    feat_args: tuple,
    dist: DistInfo,
    config_record: dict | None,
) -> tuple[DatasetEntry, Any]:
    """Create (rank 0, first) or open the entry and its feature group.

    The feature group must have been computed in ``settings.precision`` (the cache refuses it
    otherwise); one older than that attribute gets it recorded before its run header, from which
    the cache infers it, is overwritten with this run's. A new entry records the versions of
    the packages that decide the source's pixels; an existing one that records others is
    refused while the job would write image rows of it (``_writes_images``).
    """
    cfg = settings.extract
    feat_args = (*feat_args, settings.precision)
    packages = source_packages(source)

    def make() -> DatasetEntry:
        entry = DatasetEntry.create_or_open(
            settings.cache,
            dataset,
            cfg.split,
            resolution,
            len(source),
            source.describe(),
            source.class_names,
            cfg.chunk,
            cfg.shard,
            files=callable(getattr(source, "read_file", None)),
            packages=packages,
        )
        check_listing(entry, source, PENDING)  # renamed or moved files: refused, not reused
        # files replaced under the same name: refused, not kept as the old pixels
        check_files(entry, source, WRITTEN, repair_hint(entry.name, "this `repackctl extract`"))
        # pixels of other Pillow / numpy versions: refused before the features group is made
        entry.check_image_versions(packages, lambda: _writes_images(entry, feat_args[0]))
        return entry

    if dist.rank == 0:
        entry = make()
        feats = entry.create_or_open_features(*feat_args)
        if not feats.group.attrs.get("complete", False):
            update_changed(feats.group.attrs, {"precision": settings.precision})
            if config_record is not None:
                feats.group.attrs["config"] = config_record  # the settings of the run that writes
    dist.barrier()
    if dist.rank != 0:
        entry = make()
        feats = entry.create_or_open_features(*feat_args)
    return entry, feats


def _writes_images(entry: DatasetEntry, features_id: str) -> bool:
    """Whether this extract (all its processes) would write image rows of ``entry``: a shard
    with a pending image row whose features (group ``features_id``; all pending while it is
    not made) are pending too, as ``_ShardWriter._write`` writes them. Every process judges
    every process's shards, from the same ``done`` arrays, so they all refuse or none does
    (one that refused alone would leave the others writing, or waiting for it)."""
    images = entry.done_mask() == PENDING
    if not images.any():
        return False
    features = None
    if features_id in entry.feature_ids():
        features = entry.features(features_id).done_mask() == PENDING
    for r in owned_ranges(entry.n, entry.shard):  # the job's shards: rank 0 of a world of 1
        todo = features is None or features[r.start : r.stop].any()
        if todo and images[r.start : r.stop].any():
            return True
    return False


def _layout_kept(entry: DatasetEntry, settings: Settings, config_record: dict | None) -> str:
    """A ``note:`` when a ``--chunk`` / ``--shard`` that was given (not the default) differs from
    the layout of the existing entry, which keeps its own (its arrays are chunked that way and
    every features group follows them); empty otherwise.

    Where a value came from is read from ``config_record`` (the CLI's resolved settings); without
    one, a value set on the settings object counts as given.
    """
    cfg = settings.extract
    sources = (config_record or {}).get("sources")
    given = []
    for key, have in (("chunk", entry.chunk), ("shard", entry.shard)):
        value = getattr(cfg, key)
        if sources is None:
            source = "setting" if key in cfg.model_fields_set else "default"
        else:
            source = sources.get(f"extract.{key}", "default")
        if source == "default" or value == have:
            continue
        given.append(f"--{key} {value}" if source == "flag" else f"{key} {value} ({source})")
    if not given:
        return ""
    return (
        f"note: cache entry {entry.name} exists and keeps its layout (chunk {entry.chunk}, shard "
        f"{entry.shard}): {' and '.join(given)} not applied (a layout is fixed when its entry "
        "is created, for every features group of it)"
    )


@dataclass
class _ShardWriter:
    """Encodes batches into a per-shard buffer and writes each shard once it is complete."""

    entry: DatasetEntry
    feats: Any
    img_done: np.ndarray
    locks: ShardLocks
    encoder: Any
    device: torch.device
    precision: str
    resolution: int
    flips: int
    written: int = 0
    buf: dict | None = None
    pool: concurrent.futures.ThreadPoolExecutor | None = None
    inflight: concurrent.futures.Future | None = None
    bar: Any = None
    #: the entry's own shard locks, shared by the extracts of every encoder (made on first use:
    #: a rerun that writes no image adds no lock folder)
    image_locks: ShardLocks | None = None
    #: the source, whose files a shard that another extract recorded meanwhile is checked
    #: against (``_race_warning``); None: not checked
    source: ImageSource | None = None
    images: GuardedArray = field(init=False)
    #: the entry's ``fingerprints`` (None: an entry without them, which records none)
    prints: Any = field(init=False)
    #: ``prints`` read through the checksum check (None without them)
    recorded_prints: GuardedArray | None = field(init=False)

    def __post_init__(self) -> None:
        # pixels an earlier extraction wrote are read back, never re-decoded: a lost or corrupt
        # chunk of them must stop the run, not be encoded as black images; so must the
        # fingerprints of those images, which are kept as they are
        redo = repair_hint(self.entry.name, "this `repackctl extract`")
        written = self.img_done == WRITTEN
        self.images = GuardedArray(self.entry.images, written, f"{self.entry.name} images", redo)
        self.prints = self.entry.fingerprints
        self.recorded_prints = None
        if self.prints is not None:
            label = f"{self.entry.name} fingerprints"
            self.recorded_prints = GuardedArray(self.prints, written, label, redo)

    def _new_buffer(self, m: int) -> dict[str, np.ndarray]:
        """Zeroed arrays for one shard of ``m`` samples."""
        r, f = self.resolution, self.flips
        t, c = self.encoder.spec.num_tokens, self.encoder.spec.dim
        return {
            "images": np.zeros((m, r, r, 3), np.uint8),
            "labels": np.full(m, -1, np.int32),
            "keys": np.empty(m, dtype=object),
            "prints": np.tile(NO_FILE, (m, 1)),
            "codes": np.zeros(m, np.uint8),
            "tokens": np.zeros((m, f, t, c), np.float16),
            "cls": np.zeros((m, f, c), np.float16),
        }

    def _encode(self, imgs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (B, F, T, C) and CLS (B, F, C) of uint8 images, for every flip."""
        device = self.device
        x = torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2)  # (B, 3, R, R)
        x = x.float() / 127.5 - 1.0
        toks, clss = [], []
        with amp_autocast(self.precision, device):
            for f in range(self.flips):
                tok, cls = self.encoder(x.flip(-1) if f else x)  # (B, T, C), (B, C)
                # float16 on the device (the same rounding as numpy's, half the copy)
                toks.append(tok.float().half())
                clss.append(cls.float().half())
        return torch.stack(toks, 1).cpu().numpy(), torch.stack(clss, 1).cpu().numpy()

    def add(
        self,
        rng: range,
        idx: np.ndarray,
        imgs: np.ndarray,
        codes: np.ndarray,
        labels: np.ndarray,
        files: tuple[list[str], np.ndarray],
        bar: ProgressBar,
    ) -> None:
        """Encode one batch of shard ``rng`` into the buffer; write the shard when complete.
        ``files``: the batch's keys and fingerprint rows (B, 6)."""
        keys, prints = files
        if self.buf is None:
            self.buf = self._new_buffer(len(rng))
        buf = self.buf
        local = idx - rng.start
        # an image the entry recorded keeps its record, whatever the file decodes to now: a file
        # that changed or became unreadable since must not write a features row for a skipped
        # image (or skip one whose image is written), nor change the entry's code
        recorded = self.img_done[idx]
        known = recorded != PENDING
        codes = np.where(known, recorded, codes)
        imgs[known & (recorded != WRITTEN)] = 0  # a skipped input's row stays black
        cached = recorded == WRITTEN
        if cached.any():  # images written by an earlier extraction: use the cached pixels
            imgs[cached] = self.images[int(idx[0]) : int(idx[-1]) + 1][cached]
        ok = codes == WRITTEN
        if ok.any():
            buf["tokens"][local[ok]], buf["cls"][local[ok]] = self._encode(imgs[ok])
        buf["images"][local] = imgs
        buf["labels"][local] = labels
        buf["keys"][local] = keys
        buf["prints"][local[ok]] = prints[ok]  # the files of the images written, no skip's
        buf["codes"][local] = codes
        bar.advance(len(idx))
        if int(idx[-1]) + 1 == rng.stop:
            self._submit(rng, bar)

    def _submit(self, rng: range, bar: ProgressBar) -> None:
        """Hand the complete shard to the writer thread (after the previous one is written)."""
        self.flush()
        buf, self.buf = self.buf, None
        self.written += int((buf["codes"] == WRITTEN).sum())
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, "extract-writer")
        self.bar = bar
        self.inflight = self.pool.submit(self._write, rng, buf)

    def flush(self) -> None:
        """Wait for the shard being written; raise its error, log its warning."""
        if self.inflight is None:
            return
        future, self.inflight = self.inflight, None
        message = future.result()
        if message:
            self.bar.log(message)

    def close(self) -> None:
        """Finish the shard in flight (also after an error) and stop the writer thread."""
        try:
            self.flush()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

    def _write_images(self, sl: slice, buf: dict[str, np.ndarray]) -> bool:
        """Write the shard's images, labels, keys and entry codes unless another process did
        since this one read the entry's ``done``; False when that process recorded other pixels
        or codes than this one decoded (a file changed in between).

        Under the entry's own lock of the shard (``image_locks``): an extract of another encoder
        takes the lock of its features group, not this one's, and would otherwise decode and
        write the same image shard too. The lock is held for this write only (never while
        waiting for anything else), so writers of different encoders cannot deadlock.
        """
        entry, k = self.entry, sl.start // self.entry.shard
        if self.image_locks is None:
            self.image_locks = ShardLocks(entry.root, entry.done)
        self.image_locks.acquire(k)
        try:
            recorded = np.asarray(entry.done[sl])  # a fresh read, under the lock
            if (recorded == PENDING).any():
                entry.images[sl] = buf["images"]
                entry.labels[sl] = buf["labels"]
                entry.keys[sl] = buf["keys"].astype(str)
                self._write_fingerprints(sl, buf["prints"])
                entry.done[sl] = buf["codes"]
                return True
            same = np.array_equal(recorded, buf["codes"])
            return same and np.array_equal(np.asarray(entry.images[sl]), buf["images"])
        finally:
            self.image_locks.release(k)

    def _write_fingerprints(self, sl: slice, prints: np.ndarray) -> None:
        """Write the shard's fingerprint rows, before its ``done`` (an entry without the array
        records none). Images the entry recorded already (read back, not decoded: ``NO_FILE``
        here) keep the fingerprint of the file read then, read through the checksum check (a
        damaged chunk is an ``Error:`` naming `cache verify --repair`, which finds it: it holds
        written rows). A recorded skip has none (``NO_FILE``, as ``prints`` holds it), so a
        shard whose recorded rows are all skips does not read its chunk: a damaged one, which
        that repair does not look at, is overwritten instead of stopping the run for good."""
        if self.prints is None:
            return
        kept = self.img_done[sl] == WRITTEN  # (S,)
        if kept.any():
            prints = np.where(kept[:, None], np.asarray(self.recorded_prints[sl]), prints)
        self.prints[sl] = prints
        crash_point("fingerprints-written")

    def _race_warning(self, sl: slice) -> str:
        """The ``Warning:`` for shard ``sl`` when another extract recorded other pixels or
        codes for it since this one read the entry: its features are left pending. What a rerun
        does then depends on the files: it encodes the recorded images if their files are the
        ones that extract read, and refuses the entry (``check_files``) if they changed since,
        so the files are checked now and the advice is the one that holds."""
        head = (
            f"Warning: samples {sl.start}..{sl.stop - 1} decoded otherwise than another extract "
            "recorded them a moment ago"
        )
        changed = self._changed_since_recorded(sl)
        if not changed:
            return (
                f"{head} (files changed?): their features are left pending; run the same "
                "extract again to encode the images it recorded"
            )
        name, key = self.entry.name, self.source.key
        files = name_items([f"{key(i)!r} ({why})" for i, why in changed], 3)
        return (
            f"{head}: {len(changed)} of their files changed since it read them ({files}); "
            "their features are left pending, and the same extract run again refuses the entry "
            "until those files are restored as they were (or the entry is removed with "
            f"`{remove_command(name)}` and extracted again)"
        )

    def _changed_since_recorded(self, sl: slice) -> list[tuple[int, str]]:
        """``(row, why)`` of the images of ``sl`` the entry records now whose files changed
        since (``cache.listing.changed_files``); none without fingerprints or files."""
        path_of = getattr(self.source, "path", None)
        if self.prints is None or not callable(path_of):
            return []
        written = np.zeros(self.entry.n, bool)
        written[sl] = np.asarray(self.entry.done[sl]) == WRITTEN
        if not written.any():
            return []
        redo = repair_hint(self.entry.name, "this `repackctl extract`")
        guard = GuardedArray(self.prints, written, f"{self.entry.name} fingerprints", redo)
        prints = np.asarray(guard[sl])  # (S, 6)
        read = written[sl] & (prints[:, 0] >= 0)
        return changed_files(sl.start + np.flatnonzero(read), prints[read], path_of)

    def _write(self, rng: range, buf: dict[str, np.ndarray]) -> str | None:
        """Shard complete: write its data, then mark it done and release its lock."""
        entry, feats = self.entry, self.feats
        message = None
        sl = slice(rng.start, rng.stop)
        if (self.img_done[sl] == PENDING).any() and not self._write_images(sl, buf):
            self.locks.release(rng.start // entry.shard)  # left pending: a rerun redoes it
            self.written -= int((buf["codes"] == WRITTEN).sum())  # _submit waits for this write
            return self._race_warning(sl)
        if not np.isfinite(buf["tokens"]).all():
            message = f"Warning: non-finite features in samples {rng.start}..{rng.stop - 1}"
        feats["tokens"][sl] = buf["tokens"]
        feats["cls"][sl] = buf["cls"]
        feats.done[sl] = buf["codes"]
        self.locks.release(rng.start // entry.shard)
        return message


def _encode_pending(
    writer: _ShardWriter,
    source: ImageSource,
    pending: list[range],
    shards: _ShardBatches,
    workers: int,
    bar: ProgressBar,
) -> list[tuple[str, str]]:
    """Decode, encode and write this process's pending shards; return decode warnings.

    First the shards whose locks are free (``shards``), then, once each of them is written and
    its lock released, the deferred ones, one at a time: this process never waits for a lock
    while it holds one (two processes would each wait for the other's, ``_ShardBatches``). A
    deferred shard still pending once its lock is free (its holder died) gets its own loader
    pass, written before the next lock is waited for.
    """
    by_start = {r.start: r for r in pending}
    try:
        found = _encode_batches(writer, source, shards, by_start, workers, bar)
        writer.flush()  # every shard taken so far written and its lock released
        for r in shards.deferred:
            if batches := shards.wait_for(r):
                found += _encode_batches(writer, source, batches, by_start, workers, bar)
                writer.flush()
    finally:
        writer.close()
    return found


def _encode_batches(
    writer: _ShardWriter,
    source: ImageSource,
    batches: Any,
    by_start: dict[int, range],
    workers: int,
    bar: ProgressBar,
) -> list[tuple[str, str]]:
    """Decode and encode ``batches`` (whole shards, ``by_start``: each by its first sample),
    handing each complete shard to the writer; return decode warnings."""
    found: list[tuple[str, str]] = []
    shard = writer.entry.shard
    # images the entry already holds (or recorded as skipped) are read back, never decoded again
    loader = _loader(source, writer.resolution, batches, workers, writer.img_done != PENDING)
    # decoding in a second thread pays off when the encoder runs on a GPU (the host thread waits
    # for it); on the CPU the two threads fight over the GIL and the cores (measured slower)
    items = _prefetched(loader) if writer.device.type == "cuda" else loader
    for idx, imgs, codes, labels, keys, notes, prints in items:
        found += [(k, note) for k, note in zip(keys, notes, strict=True) if note]
        rng = by_start[int(idx[0]) - int(idx[0]) % shard]
        writer.add(rng, idx, imgs, codes, labels, (keys, prints), bar)
    return found


def _prepare(settings: Settings, dist: DistInfo) -> tuple[int, ImageSource, Any, torch.device]:
    """Resolution, source and encoder (moved to its device), validated before anything is
    written."""
    cfg = settings.extract
    resolution = cfg.resolution or default_resolution(cfg.data)
    _check_resolution(resolution)
    source = make_source(
        cfg.data, cfg.split, cfg.num, settings.seed, settings.imagenet_root, cfg.val_fraction
    )
    source = _as_listed_before(settings, source, resolution)
    _check_source_resolution(source, resolution)
    _check_keys(source)
    encoder = make_encoder(cfg.encoder, cfg.weights, cfg.layer, resolution, settings.seed)
    _check_patch(resolution, encoder.spec.patch_size)
    device = resolve_device(settings.device, dist.local_rank)
    check_precision(settings.precision, device)
    return resolution, source, encoder.to(device), device


def _as_listed_before(settings: Settings, source: ImageSource, resolution: int) -> ImageSource:
    """``source`` as its entries in the cache list it. A flat image folder's caption index
    files (``captions.jsonl``, ``captions.csv`` at its top) are left out of its listing; entries
    extracted before that hold a row for each (skipped: not an image) and count them in their
    ``total``, which also picks a ``--num`` subset and a ``--val-fraction`` split. Where the
    entry of this split, or of the other split of a ``--val-fraction`` pair, was made from that
    listing (its keys are that listing's, and not this one's or with another ``total``), the
    folder is listed with them again: its reruns, resumes, other encoders and other split go on
    instead of being refused as made from another source, or as sharing files with a split."""
    from repackctl.data.imagefolder import HELD_OUT, ImageFolderSource

    left_out = getattr(source, "caption_index_left_out", None)
    if not left_out or not isinstance(source, ImageFolderSource) or source.layout != "flat":
        return source
    cfg = settings.extract
    splits = [cfg.split]
    if cfg.val_fraction is not None:  # the other split's entry fixed the split of the files
        splits += [s for s in ("train", HELD_OUT) if s != cfg.split]

    def listing(split: str, listed: bool) -> ImageFolderSource:
        return ImageFolderSource(
            str(source.root),
            split=split,
            num=cfg.num,
            seed=settings.seed,
            val_fraction=cfg.val_fraction,
            caption_index_listed=listed,
        )

    try:
        for split in splits:
            now = source if split == cfg.split else listing(split, False)
            before = listing(split, True)
            if _made_from(settings.cache, before, now, (split, resolution, cfg.num)):
                return listing(cfg.split, True)
    except Exception:  # a damaged or unreadable entry, or folder: opened, and named, as usual
        return source
    return source


def _made_from(
    cache: str, before: ImageSource, now: ImageSource, entry: tuple[str, int, int | None]
) -> bool:
    """Whether the cache entry of ``split`` was made from the listing ``before`` and not from
    ``now`` (the same folder without its caption index files): its keys and ``total`` are
    ``before``'s, and its keys or ``total`` not ``now``'s. False when there is no such entry.
    ``entry``: its split, resolution and the ``--num`` given."""
    split, resolution, num = entry
    name = entry_name(dataset_label(before, num), split, resolution)
    if name not in list_entries(cache):
        return False
    found = DatasetEntry.open(cache, name)
    keys = [str(k) for k in found.keys[:]]
    total = (found.attrs.get("source") or {}).get("total")

    def same(src: ImageSource) -> bool:
        return total == src.describe().get("total") and keys == [
            src.key(i) for i in range(len(src))
        ]

    return same(before) and not same(now)


def _check_before_writing(
    settings: Settings,
    name: str,
    source: ImageSource,
    resolution: int,
    ranges: list[range],
    dist: DistInfo,
) -> None:
    """The refusals before the entry is opened: a held-out split that shares files, a
    ``--shard`` that is no multiple of ``--chunk`` for a new entry (an existing one keeps its
    layout, and the values given are not applied: a ``note:`` says so), ``--strict``."""
    cfg = settings.extract
    _check_held_out_disjoint(settings.cache, name, source)
    if name not in list_entries(settings.cache):
        check_layout(cfg.chunk, cfg.shard)
    if cfg.strict:
        _strict_check(settings.cache, name, source, resolution, ranges, settings.num_workers, dist)


def _check_recorded_images(
    entry: DatasetEntry, feats: Any, img_done: np.ndarray, feat_done: np.ndarray
) -> None:
    """Refuse rows pending in the entry's own ``done`` that these features record (a lost
    ``done`` chunk reads as pending): the extract resumes from its features' ``done`` and would
    write nothing for them, "resuming" for ever while `cache verify` and `cache ls` name it.
    `cache verify --repair` writes that record again from the features where the images are
    intact (``cache.verify.restore_done``), else marks the rows pending for this extract."""
    lost = np.flatnonzero((img_done == PENDING) & (feat_done != PENDING))
    if not len(lost):
        return
    raise CacheError(
        f"{len(lost)} samples of {entry.name} (rows {lost[0]}–{lost[-1]}) are pending in the "
        f"entry's own done but written in its features {feats.group.basename} (a chunk of done "
        "lost?): this extract resumes from its features' done and would write nothing for them",
        f"run `repackctl cache verify {entry.name} --repair` (it restores that record where "
        "the images are intact, else marks the rows pending), then this extract again",
    )


def run_extract(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
    config_record: dict | None = None,
) -> ExtractResult:
    """Extract (or resume extracting) one encoder's features of one dataset split."""
    cfg = settings.extract
    dist = dist or DistInfo.from_env()
    resolution, source, encoder, device = _prepare(settings, dist)
    n = len(source)
    spec = encoder.spec
    flips = 2 if cfg.flips else 1
    ranges = owned_ranges(n, cfg.shard, dist.rank, dist.world)

    dataset = dataset_label(source, cfg.num)
    name = entry_name(dataset, cfg.split, resolution)
    _check_before_writing(settings, name, source, resolution, ranges, dist)
    feat_args = (spec.entry_id(), spec.attrs(), flips, spec.num_tokens, spec.dim)
    entry, feats = _open_entry(
        settings, source, dataset, resolution, feat_args, dist, config_record
    )
    ranges = owned_ranges(n, entry.shard, dist.rank, dist.world)  # the entry's layout wins

    # read through their checksums: a corrupt chunk is an `Error:` naming it and `cache verify
    # --repair`, never zarr's ValueError (a traceback)
    img_done = entry.done_mask()
    feat_done = feats.done_mask()
    _check_recorded_images(entry, feats, img_done, feat_done)
    pending = [r for r in ranges if (feat_done[r.start : r.stop] == PENDING).any()]
    already = sum(len(r) for r in ranges) - sum(len(r) for r in pending)
    todo = sum(len(r) for r in pending)
    t0 = time.perf_counter()
    locks = ShardLocks(settings.cache, feats.done)
    shards = _ShardBatches(pending, entry.shard, cfg.batch_size, locks, feats.done)
    parts = (entry, feats, img_done, locks, encoder, device, settings.precision, resolution, flips)
    # the source: whose files a shard another extract records meanwhile is checked on
    writer = _ShardWriter(*parts, source=source)
    # where the precision came from (flag, env …, file …, default), as training's header says
    given = ((config_record or {}).get("sources") or {}).get("precision", "settings")
    header = run_header(dist, device, settings.precision, given, settings.seed)
    if dist.rank == 0 and not feats.group.attrs.get("complete", False):
        feats.group.attrs["run_header"] = header  # a rerun that writes nothing keeps the record
    with (
        progress(f"extract {spec.id}", total=todo, unit="img") as bar,
        _releasing(locks),
        entry_writer(entry.group),  # `cache rm` waits for no writer: it refuses
    ):
        bar.log(header_line(header))
        for line in _opening_lines(settings, source, entry, (already, img_done), config_record):
            bar.log(line)
        found = _encode_pending(writer, source, pending, shards, settings.num_workers, bar)
        bar.log(
            f"this process encoded {len(shards.taken)} shard(s); "
            f"{shards.by_others} pending shard(s) were done by another process"
        )
    seconds = time.perf_counter() - t0
    dist.barrier()
    found = [(key, note) for key, note in dist.all_items(found)]  # every process's, not rank 0's
    skipped = list(getattr(source, "skipped", []))
    skipped += _finalize(entry, feats, dist.rank == 0, img_done)
    written, already, seconds = dist.job_totals(writer.written, already, seconds)
    return ExtractResult(
        entry=entry.name,
        features=spec.entry_id(),
        n=n,
        written=written,
        already_done=already,
        skipped=skipped,
        warnings=found,
        seconds=seconds,
        resolution=resolution,
        tokens_shape=tuple(feats["tokens"].shape),
        precision=settings.precision,
    )


def _opening_lines(
    settings: Settings,
    source: ImageSource,
    entry: DatasetEntry,
    counts: tuple[int, np.ndarray],
    config_record: dict | None,
) -> list[str]:
    """What an extract says before it encodes: a ``--num`` above the source's size, a layout
    given but not applied, a resume (``counts``: the samples of this process already done),
    the skips the entry recorded before (``counts``: its codes then)."""
    cfg, n = settings.extract, len(source)
    already, img_done = counts
    lines = []
    if cfg.num is not None and n < cfg.num:  # the entry's name says so too (-n<N>)
        lines.append(
            f"Warning: --num {cfg.num} asks for more images than {source.name} holds "
            f"({n} inputs): all of them are extracted, into {entry.name}"
        )
    if kept := _layout_kept(entry, settings, config_record):  # a --shard not applied
        lines.append(kept)
    if already:
        lines.append(f"resuming: {already} samples of this process were already done")
    if note := _recorded_skips_note(entry.name, img_done):
        lines.append(note)
    return lines


@contextlib.contextmanager
def _releasing(locks: ShardLocks) -> Iterator[None]:
    try:
        yield
    finally:
        locks.release_all()


def _recorded_skips_note(name: str, img_done: np.ndarray) -> str:
    """A ``Warning:`` when entry ``name`` (``img_done``: its codes when this extract began)
    holds inputs an earlier extract skipped, listed after the run with the reason found then.

    Their files are not read again: a recorded skip stays one whatever the file holds now, as
    every features group of the entry has no row for it, and an extract of one encoder cannot
    write the others'. Re-checking them would cost a read and a decode per skipped file on
    every rerun (a 4 GB stray file: seconds) to tell the user what this says anyway: how to
    include them. So the message says what is known (skipped then, and why) and not that the
    file is bad now.
    """
    count = int((img_done >= 2).sum())
    if not count:
        return ""
    return (
        f"Warning: cache entry {name} holds {count} input(s) that an earlier extract skipped "
        "(listed below, with the reason found then): an extract never retries a recorded skip, "
        "even if the file reads now; to include them, make sure they read, then remove the "
        f"entry with `{remove_command(name)}` (all it holds goes with it: every encoder's "
        "features, latents, caption features) and extract again"
    )


def _finalize(
    entry: DatasetEntry, feats: ArrayGroup, write: bool, img_done: np.ndarray
) -> list[tuple[str, str]]:
    """Record counts and the skipped inputs in the attributes (rank 0 only writes); return the
    skipped inputs, those recorded before this extract began (``img_done``) said so."""
    codes = entry.done[:]
    bad = np.flatnonzero(codes >= 2)
    keys = entry.keys[bad] if len(bad) else []
    skipped = [(str(k), SKIP_REASONS[int(codes[i])]) for k, i in zip(keys, bad, strict=True)]
    before = " when an earlier extract read it (not retried)"
    told = [
        (k, r + before if img_done[i] >= 2 else r) for (k, r), i in zip(skipped, bad, strict=True)
    ]
    if write:
        summary = {
            "written": int((codes == WRITTEN).sum()),
            "skipped": [{"key": k, "reason": r} for k, r in skipped],
            "num_skipped": len(skipped),
            "complete": bool((codes != PENDING).all()),
        }
        update_changed(entry.group.attrs, summary)
        fcodes = feats.done[:]
        update_changed(
            feats.group.attrs,
            {
                "written": int((fcodes == WRITTEN).sum()),
                "complete": bool((fcodes != PENDING).all()),
            },
        )
    return told
