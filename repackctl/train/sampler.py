"""Deterministic, resumable order of training samples, the same for any number of processes.

Random single-sample reads from Zarr run at ~1–1.5k samples/s while chunk-aligned blocks run
several times faster (``reference/environment.md``), so the unit of shuffling is a *block* of
``block`` consecutive indices: each epoch permutes the blocks with a generator seeded from
``(seed, epoch)``, then shuffles the samples inside each group of ``buffer_blocks`` consecutive
(permuted) blocks. ``block=1`` gives a plain permutation.

Each step takes the next ``global_batch`` indices of this endless stream (a batch may straddle two
epochs). Process ``r`` of ``W`` takes the contiguous ``r``-th ``1/W`` of the global batch and splits
it into ``grad_accum`` micro-batches, so the global order never depends on ``W``. The position is
``(epoch, offset)``, stored in ``state.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repackctl.errors import ConfigError


@dataclass(frozen=True)
class Position:
    """Where the next batch starts: ``offset`` samples into ``epoch``'s order."""

    epoch: int = 0
    offset: int = 0


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
