"""The training order of class-sorted data read in chunk-sized blocks (train/sampler.py).

Image-folder and ImageNet entries store rows in class order, so each Zarr chunk holds one class.
The official recipes shuffle uniformly (RePack stage2/train.py and REPA train.py:
``shuffle=True``); a fixed window of 16 chunks gave a batch about a sixteenth of the classes.
Real Zarr arrays in a tmp folder, read through ``CachedRows`` as the DiT and pack stages do.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from repackctl.data.cached import CachedRows
from repackctl.train.sampler import BlockSampler

CLASSES, PER_CLASS, CHUNK, BATCH, SEED = 256, 32, 32, 16, 7
N = CLASSES * PER_CLASS
ROW_BYTES = 16 * 4  # float32 (16,)
DATA_GIB = N * ROW_BYTES / 2**30


def _rows(tmp_path, memory_gb: float) -> tuple[CachedRows, np.ndarray]:
    """A class-sorted real Zarr array (one class per chunk) and its labels."""
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)  # (N,) sorted by class
    arr = zarr.create_array(
        str(tmp_path / "rows.zarr"), shape=(N, 16), chunks=(CHUNK, 16), dtype="float32"
    )
    arr[:] = np.broadcast_to(labels[:, None], (N, 16)).astype(np.float32)
    return CachedRows({"x": arr}, np.arange(N), CHUNK, memory_gb=memory_gb), labels


def _window(rows: CachedRows, labels: np.ndarray, memory_gb: float, tmp_path) -> int:
    from repackctl.data.cached import shuffle_window  # the stages' resolution of the window

    return shuffle_window(
        rows,
        None,  # the default setting
        tmp_path / "run",  # a new run: no recorded window
        block=1 if rows.in_memory else CHUNK,
        memory_gb=memory_gb,
        seed=SEED,
        labels=labels,
        batch=BATCH,
    )


def test_block_reads_default_window_is_near_uniform(tmp_path, capsys):
    from repackctl.train.sampler import measured_classes_per_batch, uniform_classes_per_batch

    memory_gb = 0.9 * DATA_GIB  # the data does not fit: chunk-block reads
    rows, labels = _rows(tmp_path, memory_gb)
    assert not rows.in_memory
    window = _window(rows, labels, memory_gb, tmp_path)
    # two windows of 32-row chunks fit the budget: 0.9 * 256 / 2 chunks
    assert window == int(0.9 * N * ROW_BYTES // (2 * CHUNK * ROW_BYTES)) == 115
    assert rows.buffer_chunks == 2 * window  # every chunk still read once per epoch
    sampler = BlockSampler(N, SEED, CHUNK, window)
    measured = measured_classes_per_batch(sampler, labels, BATCH)
    uniform = uniform_classes_per_batch(labels, BATCH)
    # uniform shuffle: sum_k 1 - C(N - 32, 16) / C(N, 16) over 256 classes
    assert uniform == pytest.approx(15.55, abs=0.01)
    old = measured_classes_per_batch(BlockSampler(N, SEED, CHUNK, 16), labels, BATCH)
    assert old < 0.7 * uniform  # the fixed window of 16 chunks: ~10 classes
    assert measured >= 0.93 * uniform
    assert "Warning:" not in capsys.readouterr().err


def test_warning_when_budget_cannot_cover_the_data(tmp_path, capsys):
    memory_gb = 1e-5 * DATA_GIB  # room for no window: the floor of 16 chunks
    rows, labels = _rows(tmp_path, memory_gb)
    assert _window(rows, labels, memory_gb, tmp_path) == 16
    err = capsys.readouterr().err
    assert "Warning: the data is shuffled within windows of 16 of 256 chunks" in err
    assert "not the ~16 of the official uniform shuffle" in err
    assert "--in-memory" in err and "--memory-gb 1 " in err


def test_in_memory_order_is_unchanged(tmp_path, capsys):
    """In-memory data keeps the window 16 and so its order (pinned from the code before the
    memory-sized window): the DiT's sample-by-sample shuffle and pack's chunk blocks."""
    rows, labels = _rows(tmp_path, 4.0)
    assert rows.in_memory
    assert _window(rows, labels, 4.0, tmp_path) == 16
    dit = BlockSampler(N, SEED, 1, 16).epoch_order(0)
    assert dit[:8].tolist() == [6787, 590, 4124, 7731, 332, 7948, 8005, 1780]
    assert capsys.readouterr().err == ""
    from repackctl.data.cached import shuffle_window

    pack = shuffle_window(
        rows, None, tmp_path / "run", block=CHUNK, memory_gb=4.0, seed=SEED, labels=None, batch=32
    )
    assert pack == 16
    order = BlockSampler(N, SEED, CHUNK, pack)
    assert order.epoch_order(0)[:8].tolist() == [250, 5051, 5684, 4487, 5524, 4511, 1883, 4489]
    assert order.epoch_order(1)[-4:].tolist() == [6574, 2500, 3719, 3673]


def test_reads_count_repeats_over_the_global_batch_for_any_split():
    """A batch that straddles two epochs may read a sample twice; each read's repeat is counted
    over the whole global batch, so every split into processes × micro-batches gives each read
    the same (sample, repeat) key."""
    from repackctl.train.sampler import global_repeats, local_reads

    batch = np.array([5, 1, 7, 3, 2, 5, 1, 5])
    assert global_repeats(batch).tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    for world, accum in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 2)):
        reads = [r for rank in range(world) for r in local_reads(batch, rank, world, accum)]
        assert np.concatenate([i for i, _ in reads]).tolist() == batch.tolist()
        assert np.concatenate([r for _, r in reads]).tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
