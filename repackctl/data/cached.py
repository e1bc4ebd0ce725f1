"""One cache-backed dataset: the rows of a cache entry's sample-indexed arrays (DESIGN.md §4).

Every stage that trains from the cache reads it the same way, through :class:`CachedRows`:

- the training set is a list of *valid* cache indices (``indices``): rows whose every array was
  written (``done == WRITTEN``); position ``k`` of the training set is cache row ``indices[k]``,
  so consecutive positions are (almost always) consecutive rows and the loop's ``BlockSampler``
  blocks stay chunk-aligned;
- each array is wrapped in a ``GuardedArray`` by its stage, so a lost or corrupt chunk of a used
  row is a ``CacheError`` naming the array and the repair command, never zeros;
- the arrays are either loaded whole into memory (one sequential read each, then only the valid
  rows kept) or read as whole Zarr chunks through an LRU buffer (``ChunkReader``): random
  single-sample Zarr reads are 20–200x slower (DESIGN.md §4). ``in_memory=None``
  decides by size, with the ONE threshold rule of the package, :func:`fits_in_memory`.

Both paths return the same bytes, so a batch does not depend on how it was read. Flips: the
cache stores every sample and its mirror (axis 1, ``F``); :meth:`CachedRows.take_flip` picks one
slot per sample, :func:`mirror` flips the matching cached images, :func:`draw_flips` draws the
slots of a batch from one generator (``PackData.get`` without given flips). The training stages
draw each sample's slot from its own generator of (seed, step, sample) instead (pack and refine:
:func:`sample_generators`, with each stage's key): a micro-batch's generator is
keyed by its offset in the global batch, so its draws would change with the process count.

The stage views (``pack.data.PackData``, ``dit.latents.LatentData``, the refiner's task) are
subclasses or users of this class that only add what their batches mean.

Legend: N cache rows, B batch, F flips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.store import WRITTEN, ArrayGroup, ChunkReader, DatasetEntry
from repackctl.errors import CacheError
from repackctl.settings import Settings

#: the automatic in-memory load's size limit (GiB) of every cache-backed dataset: the default
#: of the one setting ``memory_gb`` (``--memory-gb``, ``REPACKCTL_MEMORY_GB``)
MEMORY_GB: float = Settings.model_fields["memory_gb"].default


def fits_in_memory(nbytes: int, memory_gb: float = MEMORY_GB) -> bool:
    """Whether ``nbytes`` of rows are loaded into memory when the user did not choose."""
    return nbytes <= memory_gb * 2**30


def written_rows(*done: np.ndarray) -> np.ndarray:
    """Cache indices where every ``done`` mask says WRITTEN (int64, ascending). Masks of
    different lengths (a ``zarr.json`` shape edited) are a ``CacheError``, not numpy's
    broadcast ``ValueError``: :func:`check_row_counts` names the arrays."""
    lengths = sorted({len(np.asarray(mask)) for mask in done})
    if len(lengths) > 1:
        raise CacheError(
            "the done arrays of a cache entry and its groups hold different numbers of rows "
            f"({', '.join(map(str, lengths))}): a zarr.json `shape` was edited or damaged",
            "run `repackctl cache verify` to see which entry; restore the first number of the "
            "`shape` in its arrays' zarr.json, or remove the entry with `repackctl cache rm "
            "ENTRY --yes` and extract it again",
        )
    ok = np.ones(np.shape(done[0]), bool)
    for mask in done:
        ok &= np.asarray(mask) == WRITTEN
    return np.flatnonzero(ok).astype(np.int64)


def _row_arrays(entry: DatasetEntry, groups: tuple[ArrayGroup, ...]) -> dict[str, int]:
    """The first-axis length of every sample-indexed array of ``entry`` and of ``groups``
    (features / latents: every array but the per-shard sums), by path inside the entry."""
    names = ["images", "labels", "keys", "done", "fingerprints"]
    out = {k: int(entry.group[k].shape[0]) for k in names if k in entry.group}
    for g in groups:
        where = g.group.path.partition("/")[2]
        for k in sorted(g.group.array_keys()):
            if not k.startswith("partial_"):
                out[f"{where}/{k}"] = int(g.group[k].shape[0])
    return out


def check_row_counts(entry: DatasetEntry, *groups: ArrayGroup) -> None:
    """Refuse (``CacheError`` naming the arrays and their ``zarr.json``) a cache entry whose
    sample-indexed arrays, or those of ``groups``, do not all hold the same number of rows:
    only an edited or damaged ``shape`` does that, and a reader would then mix rows of
    different lengths (numpy's broadcast error, an index out of bounds, or rows read as the
    fill value past the data that was written)."""
    lengths = _row_arrays(entry, groups)
    if len(set(lengths.values())) <= 1:
        return
    by_len: dict[int, list[str]] = {}
    for name, rows in lengths.items():
        by_len.setdefault(rows, []).append(name)
    parts = "; ".join(f"{rows} in {', '.join(names)}" for rows, names in sorted(by_len.items()))
    raise CacheError(
        f"cache entry {entry.name}: its arrays hold different numbers of rows ({parts}): the "
        "`shape` in an array's zarr.json was edited or damaged",
        "put back the first number of `shape` in the zarr.json of the arrays that differ (the "
        f"entry was extracted with {entry.attrs.get('n', '?')} rows), or remove the entry with "
        f"`repackctl cache rm {entry.name} --yes` and extract it again",
    )


def entry_labels(entry: DatasetEntry, rows: np.ndarray | None = None) -> np.ndarray:
    """The class labels (int64) of ``entry``'s written rows, at cache ``rows`` (all rows when
    None). A lost labels chunk is refused, never read as the fill value −1 (a training would
    take it as "no class", `evaluate probe` as an unlabelled split), and a corrupt one is a
    ``CacheError`` with the repair, not zarr's checksum ``ValueError``."""
    written = entry.done_mask() == WRITTEN
    if len(written) != entry.labels.shape[0]:
        check_row_counts(entry)
    redo = repair_hint(entry.name, "the same `repackctl extract`")
    guard = GuardedArray(entry.labels, written, f"cache entry {entry.name} labels", redo)
    labels = np.asarray(guard[:], dtype=np.int64)  # (N,)
    return labels if rows is None else labels[np.asarray(rows, dtype=np.int64)]


def draw_flips(generator: np.random.Generator | None, n: int, flips: int) -> np.ndarray:
    """One stored flip slot per sample from ``generator`` (slot 0 for all when None)."""
    if generator is None:
        return np.zeros(n, dtype=np.int64)
    return generator.integers(0, flips, size=n)  # (B,)


def sample_generators(
    seed: int, step: int, indices: np.ndarray, key: int, repeats: np.ndarray | None = None
) -> list[np.random.Generator]:
    """One generator per sample of step ``step``, keyed by (seed, step, sample index, repeat,
    the stage's ``key``): a sample's draws do not depend on which process or micro-batch reads
    it. The repeat tells apart two reads of a sample in a batch that straddles two epochs:
    ``repeats`` as the loop counts them over the global batch (``train.sampler.local_reads``),
    or, when None, counted within ``indices`` (the same for a whole batch read at once)."""
    if repeats is None:
        from repackctl.train.sampler import global_repeats

        repeats = global_repeats(indices)
    pairs = zip(np.asarray(indices).tolist(), np.asarray(repeats).tolist(), strict=True)
    return [np.random.default_rng([seed % 2**64, step, i, r, key]) for i, r in pairs]


def mirror(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """A copy of uint8 images (B, R, R, 3) with those of flip slot 1 mirrored left-right."""
    out = images.copy()
    mirrored = np.asarray(flips) == 1
    if mirrored.any():  # flip slot 1 holds the data of the mirrored image
        out[mirrored] = out[mirrored][:, :, ::-1]
    return out


def images_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, R, R, 3) HWC → float NCHW in [-1, 1] (DESIGN.md §2)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, 3, R, R)
    return t.float() / 127.5 - 1.0


class CachedRows:
    """Named sample-indexed arrays of one cache entry, read at the training set's positions.

    ``arrays`` maps a name to a (guarded) array whose first axis is the cache row; ``indices``
    are the valid rows; ``chunk`` is the entry's chunk size (the unit of the buffered reads);
    ``buffer_chunks`` the LRU capacity of each array's chunk reader.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        indices: np.ndarray,
        chunk: int,
        *,
        in_memory: bool | None = None,
        memory_gb: float = MEMORY_GB,
        buffer_chunks: int = 32,
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)  # (N_valid,) cache rows
        self.chunk = int(chunk)
        self.buffer_chunks = int(buffer_chunks)
        self._arrays: dict[str, Any] = {}
        self._readers: dict[str, ChunkReader] = {}
        self._memory: dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            self.add(name, array)
        if in_memory is None:
            in_memory = fits_in_memory(self.nbytes(), memory_gb)
        self.in_memory = bool(in_memory)
        if self.in_memory:
            self.load()

    def add(self, name: str, array: Any) -> None:
        """One more array (read in memory only after the next :meth:`load`)."""
        self._arrays[name] = array
        self._readers[name] = ChunkReader(array, self.chunk, self.buffer_chunks)

    def nbytes(self) -> int:
        """Bytes the valid rows of all arrays take in memory."""
        return self.row_bytes() * len(self.indices)

    def row_bytes(self) -> int:
        """Bytes one row of all arrays takes in memory."""
        return sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in self._arrays.values())

    def set_buffer_chunks(self, chunks: int) -> None:
        """Resize every chunk reader's LRU buffer (the loop's shuffle window, resolved after the
        data knows whether it is in memory, sets it: two windows of chunks)."""
        self.buffer_chunks = max(1, int(chunks))
        for reader in self._readers.values():
            reader.capacity = self.buffer_chunks

    def load(self) -> None:
        """Read every array whole (one sequential read each) and keep its valid rows."""
        self._memory = {k: np.asarray(a[:])[self.indices] for k, a in self._arrays.items()}
        self.in_memory = True

    def __len__(self) -> int:
        return len(self.indices)

    def row_shape(self, name: str) -> tuple[int, ...]:
        """Shape of one row of array ``name``."""
        return tuple(int(s) for s in self._arrays[name].shape[1:])

    def take(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Rows of array ``name`` at training-set ``positions`` (any order, repeats allowed)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.in_memory:
            return self._memory[name][positions]  # (B, ...)
        return self._readers[name].take(self.indices[positions])  # (B, ...)

    def take_flip(self, name: str, positions: np.ndarray, flips: np.ndarray) -> np.ndarray:
        """Rows of array ``name`` (N, F, ...) at ``positions``, each at its flip slot (B, ...)."""
        rows = self.take(name, positions)  # (B, F, ...)
        return rows[np.arange(len(rows)), np.asarray(flips, dtype=np.int64)]


def shuffle_window(
    rows: CachedRows,
    given: int | None,
    run_dir: Any,
    *,
    block: int,
    memory_gb: float,
    seed: int,
    labels: np.ndarray | None,
    batch: int,
) -> int:
    """The loop's shuffle window (``buffer_blocks``) for training on ``rows`` read in ``block``-row
    blocks: ``given``, the run's record or the memory budget (``train.config.
    resolve_buffer_blocks``). Sizes the chunk readers to two windows and prints a ``Warning:``
    when a batch holds noticeably fewer classes than under a uniform shuffle."""
    from repackctl.progress import warn
    from repackctl.train.config import resolve_buffer_blocks
    from repackctl.train.sampler import BlockSampler, window_warning

    window = resolve_buffer_blocks(
        given,
        run_dir,
        num_samples=len(rows),
        block=block,
        row_bytes=rows.row_bytes(),
        memory_gb=memory_gb,
        in_memory=rows.in_memory,
    )
    if not rows.in_memory:
        rows.set_buffer_chunks(2 * window)
    gib = rows.nbytes() / 2**30
    n_blocks = -(-len(rows) // max(1, block))
    hint = (
        f"--buffer-blocks {n_blocks} gives it (the rows are in memory)"
        if rows.in_memory
        else f"--in-memory (loads {gib:.1f} GiB) or --memory-gb {math.ceil(2 * gib)} gives it"
    )
    message = window_warning(BlockSampler(len(rows), seed, block, window), labels, batch, hint)
    if message:
        warn(message)
    return window
