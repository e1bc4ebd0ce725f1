"""Deterministic, resumable order of training samples, the same for any number of processes.

Random single-sample reads from Zarr run at ~1–1.5k samples/s while chunk-aligned blocks run
several times faster (``reference/environment.md``), so the unit of shuffling is a *block* of
``block`` consecutive indices: each epoch permutes the blocks with a generator seeded from
``(seed, epoch)``, then shuffles the samples inside each group of ``buffer_blocks`` consecutive
(permuted) blocks. ``block=1`` gives a plain permutation.

The window (``buffer_blocks``) is what separates this order from the official full uniform
shuffle (RePack stage2/train.py and REPA train.py: ``shuffle=True``): image-folder and ImageNet
entries are stored in class order, so each chunk holds one class and a window of 16 chunks gives a
batch of 256 about 16 classes instead of about 226. By default (``buffer_blocks`` none) the window
is :func:`auto_buffer_blocks`: as many blocks as the memory budget holds (the chunk readers keep
two windows), at least :data:`MIN_BUFFER_BLOCKS`; :func:`window_warning` says when that still
falls short of the uniform shuffle, measured on the epoch's own order.

Each step takes the next ``global_batch`` indices of this endless stream (a batch may straddle two
epochs). Process ``r`` of ``W`` takes the contiguous ``r``-th ``1/W`` of the global batch and splits
it into ``grad_accum`` micro-batches, so the global order never depends on ``W``. The position is
``(epoch, offset)``, stored in ``state.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from repackctl.errors import ConfigError


@dataclass(frozen=True)
class Position:
    """Where the next batch starts: ``offset`` samples into ``epoch``'s order."""

    epoch: int = 0
    offset: int = 0


#: the fixed shuffle window of earlier versions: the floor of the automatic one, the window of
#: in-memory data (kept, so that those runs keep their order) and of recorded runs that chose it
MIN_BUFFER_BLOCKS = 16
#: a window whose batches hold fewer classes than this fraction of the uniform shuffle's is
#: reported (:func:`window_warning`)
CLASS_RATIO_WARN = 0.95


class BlockSampler:
    """Endless stream of dataset indices, shuffled by blocks."""

    def __init__(self, num_samples: int, seed: int, block: int = 1, buffer_blocks: int = 16):
        if num_samples < 1:
            raise ConfigError(
                "the training set is empty", "check the dataset / cache entry the stage reads"
            )
        self.n = int(num_samples)
        self.seed = int(seed)
        self.block = int(block)
        self.buffer_blocks = int(buffer_blocks)
        # orders of the last two epochs (N can be 1.28M; a batch may straddle two epochs and the
        # prefetcher looks one step ahead)
        self._cache: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All ``n`` indices in the order of ``epoch`` (int64)."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        n_blocks = -(-self.n // self.block)
        starts = rng.permutation(n_blocks) * self.block
        # (n_blocks, block) index table; the last block may be short, masked below
        table = starts[:, None] + np.arange(self.block)[None, :]
        order = table[table < self.n]
        if self.block > 1:
            # buffer boundaries after every buffer_blocks blocks (the short last block may sit
            # anywhere in the permuted order, so count blocks, not positions)
            lengths = np.minimum(self.n - starts, self.block)
            ends = np.cumsum(lengths)[self.buffer_blocks - 1 :: self.buffer_blocks]
            lo = 0
            for hi in [*ends.tolist(), self.n]:
                rng.shuffle(order[lo:hi])  # in place on a view
                lo = hi
        order = order.astype(np.int64, copy=False)
        if len(self._cache) >= 2:
            self._cache.pop(min(self._cache))
        self._cache[epoch] = order
        return order

    def take(self, position: Position, count: int) -> tuple[np.ndarray, Position]:
        """The next ``count`` indices from ``position`` and the position after them."""
        parts = []
        epoch, offset = position.epoch, position.offset
        while count > 0:
            order = self.epoch_order(epoch)
            chunk = order[offset : offset + count]
            parts.append(chunk)
            count -= len(chunk)
            offset += len(chunk)
            if offset >= self.n:
                epoch, offset = epoch + 1, 0
        return np.concatenate(parts), Position(epoch, offset)


def global_repeats(global_indices: np.ndarray) -> np.ndarray:
    """For each read of a global batch, how many times the batch read that sample before (0 but
    for a batch that straddles two epochs and reads a sample in both): with the indices it
    keys a sample's own draws, the same for any split into processes and micro-batches."""
    seen: dict[int, int] = {}
    out = np.zeros(len(global_indices), dtype=np.int64)
    for j, i in enumerate(np.asarray(global_indices).tolist()):
        out[j] = seen.get(i, 0)
        seen[i] = out[j] + 1
    return out


def local_micro_batches(
    global_indices: np.ndarray, rank: int, world: int, grad_accum: int
) -> list[np.ndarray]:
    """Process ``rank``'s contiguous share of a global batch, split into ``grad_accum`` parts."""
    b = len(global_indices)
    if b % (world * grad_accum):
        raise ConfigError(
            f"global batch {b} cannot be split over {world} processes x {grad_accum} micro-batches",
            "choose global_batch divisible by processes * grad_accum",
        )
    per_rank = b // world
    mine = global_indices[rank * per_rank : (rank + 1) * per_rank]
    return np.split(mine, grad_accum)


def local_reads(
    global_indices: np.ndarray, rank: int, world: int, grad_accum: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Process ``rank``'s micro-batches of a global batch, each as (indices, repeats counted
    over the whole global batch: :func:`global_repeats`), so that per-sample draws keyed by
    both do not depend on the split into processes and micro-batches."""
    repeats = global_repeats(global_indices)
    micro = local_micro_batches(global_indices, rank, world, grad_accum)
    return list(zip(micro, local_micro_batches(repeats, rank, world, grad_accum), strict=True))


def auto_buffer_blocks(
    num_samples: int, block: int, row_bytes: int, memory_gb: float, in_memory: bool
) -> int:
    """The default shuffle window: as many ``block``-row blocks as ``memory_gb`` holds twice over
    (the chunk readers buffer two windows), at least :data:`MIN_BUFFER_BLOCKS`, at most all
    blocks. In-memory data and ``block`` 1 keep :data:`MIN_BUFFER_BLOCKS` (their order is
    unchanged from earlier versions)."""
    if in_memory or block <= 1:
        return MIN_BUFFER_BLOCKS
    n_blocks = -(-int(num_samples) // int(block))
    fit = int(memory_gb * 2**30 // max(1, 2 * int(row_bytes) * int(block)))
    return max(MIN_BUFFER_BLOCKS, min(fit, n_blocks))


def measured_classes_per_batch(
    sampler: BlockSampler, labels: np.ndarray, batch: int, batches: int = 64
) -> float:
    """Mean number of distinct labels in the first ``batches`` batches of epoch 0's order."""
    order = sampler.epoch_order(0)
    k = max(1, min(batches, len(order) // max(1, batch)))
    labels = np.asarray(labels)
    return float(
        np.mean([len(np.unique(labels[order[i * batch : (i + 1) * batch]])) for i in range(k)])
    )


def uniform_classes_per_batch(labels: np.ndarray, batch: int) -> float:
    """Expected distinct labels in ``batch`` samples drawn without replacement (a uniform
    shuffle): the sum over classes of ``1 - C(N - c, B) / C(N, B)``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    n, b = int(counts.sum()), min(int(batch), int(counts.sum()))
    total = 0.0
    for c in counts[counts > 0].tolist():
        if n - c < b:
            total += 1.0
            continue
        log_miss = (
            math.lgamma(n - c + 1) - math.lgamma(n - c - b + 1)
            - math.lgamma(n + 1) + math.lgamma(n - b + 1)
        )  # fmt: skip
        total += 1.0 - math.exp(log_miss)
    return total


def window_warning(
    sampler: BlockSampler, labels: np.ndarray | None, batch: int, hint: str
) -> str | None:
    """A one-line warning when the shuffle window does not cover the data and a batch holds
    noticeably fewer classes than under the official uniform shuffle; None otherwise."""
    n_blocks = -(-sampler.n // sampler.block)
    if sampler.block <= 1 or sampler.buffer_blocks >= n_blocks or labels is None:
        return None
    uniform = uniform_classes_per_batch(labels, batch)
    if uniform <= 1.0:
        return None
    measured = measured_classes_per_batch(sampler, labels, batch)
    if measured >= CLASS_RATIO_WARN * uniform:
        return None
    return (
        f"the data is shuffled within windows of {sampler.buffer_blocks} of {n_blocks} chunks, "
        f"so a batch of {batch} holds ~{measured:.0f} classes, not the ~{uniform:.0f} of the "
        f"official uniform shuffle; {hint}"
    )
