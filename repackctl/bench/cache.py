"""Cache read benchmark: random training batches from our Zarr cache vs the usual layouts.

The same float16 samples (packed latents of both flips, (N, 2, d, h, w)) are stored four ways:

- ``zarr chunk buffer (ours)``: a real cache entry (``cache.store``: chunks of ``chunk`` samples
  inside shards, uncompressed) read as the training stages read it, through their dataset
  ``data.cached.CachedRows``: ``train.sampler.BlockSampler`` with ``block = chunk`` orders the
  indices (chunk-aligned blocks shuffled within a window of ``buffer_blocks`` blocks) and its LRU
  chunk reader (``cache.store.ChunkReader``) reads each chunk whole, once per window;
- ``zarr runs, no buffer``: the same order, each batch read as its contiguous runs of indices
  (``cache.store.read_blocks``) with no buffer across batches;
- ``zarr in memory (ours)``: the same array loaded whole once (the ``in-memory`` option), then
  indexed; its one-off load time is reported separately;
- ``zarr random samples``: the same cache read one sample at a time in a plain permutation (what a
  map-style Dataset over Zarr does);
- ``npy memmap``: one ``.npy`` opened with ``mmap_mode="r"``, fancy-indexed by a random batch;
- ``safetensors shards``: LightningDiT's latent layout (hustvl/LightningDiT
  ``datasets/img_latent_dataset.py``): shards holding ``latents``, ``latents_flip``, ``labels``,
  each sample read with ``safe_open(...).get_slice(...)[j:j+1]`` as its ``__getitem__`` does, but
  both flips (two slices in one ``safe_open``) where its ``__getitem__`` reads one at random.

Every row reads the same bytes per sample, both flips (``extra.bytes_per_call`` in the JSON):
the other layouts hold both in one row and the training reads both (``CachedRows.take_flip``),
so a safetensors row reading one flip would read half the bytes for the same samples/s.
Every layout is written first, so all reads are warm (page cache): the figures compare the read
paths, not the disk. Throughput is samples/s over ``batches`` random batches; ratios are relative
to the ``.npy`` memmap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.bench.common import BenchContext, Row, fill_ratios, scratch_space, timed_row

#: N, sample shape (F, d, h, w), batch, chunk, shard, safetensors shard, batches per measurement
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(n=512, shape=(2, 4, 8, 8), batch=32, chunk=16, shard=128, st_shard=128, batches=4),
    "small": dict(n=8192, shape=(2, 32, 16, 16), batch=256, chunk=32, shard=1024, st_shard=2048,
                  batches=8),
    "paper": dict(n=50000, shape=(2, 32, 16, 16), batch=256, chunk=32, shard=1024,
                  st_shard=10000, batches=32),
}  # fmt: skip


def _write_layouts(root: Path, data: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
    """Write the same samples as a cache entry, an .npy and safetensors shards."""
    from safetensors.numpy import save_file

    from repackctl.cache.store import DatasetEntry

    n = data.shape[0]
    entry = DatasetEntry.create_or_open(
        str(root / "cache"),
        "bench",
        "train",
        8,
        n,
        {"bench": "cache"},
        None,
        p["chunk"],
        p["shard"],
    )
    grp, _ = entry.create_or_open_group("latents", "bench", {"shape": list(data.shape[1:])})
    arr = entry.add_sample_array(grp, "mean", data.shape[1:], "float16")
    for s in range(0, n, p["shard"]):  # shard-aligned writes, as the cache writers do
        arr[s : s + p["shard"]] = data[s : s + p["shard"]]
    np.save(root / "latents.npy", data)
    shards = []
    for i, s in enumerate(range(0, n, p["st_shard"])):
        part = data[s : s + p["st_shard"]]
        path = root / f"latents_rank00_shard{i:03d}.safetensors"
        save_file(
            {
                "latents": np.ascontiguousarray(part[:, 0]),
                "latents_flip": np.ascontiguousarray(part[:, 1]),
                "labels": np.zeros(len(part), np.int64),
            },
            str(path),
        )
        shards.append(path)
    return {"zarr": arr, "npy": root / "latents.npy", "shards": shards}


def _training_reads(arr: Any, p: dict[str, Any]) -> tuple[dict[str, Callable[[], int]], float]:
    """Our read paths (chunk buffer, runs, in memory) over one sampler; also the load time.

    The buffered and in-memory paths are the training stages' own dataset, ``CachedRows``.
    Each path returns the bytes of the samples it read.
    """
    from repackctl.cache.store import read_blocks
    from repackctl.data.cached import CachedRows
    from repackctl.train.sampler import BlockSampler, Position

    n, batch, nb = p["n"], p["batch"], p["batches"]
    sampler = BlockSampler(n, seed=0, block=p["chunk"], buffer_blocks=16)
    state = {"pos": Position()}
    every = np.arange(n)
    reader = CachedRows({"mean": arr}, every, p["chunk"], in_memory=False, buffer_chunks=32)

    def ours_buffer() -> int:
        read = 0
        for _ in range(nb):
            idx, state["pos"] = sampler.take(state["pos"], batch)
            read += reader.take("mean", idx).nbytes  # (B, F, d, h, w)
        return read

    def ours_runs() -> int:
        read = 0
        for _ in range(nb):
            idx, state["pos"] = sampler.take(state["pos"], batch)
            order = np.argsort(idx, kind="stable")
            srt = idx[order]
            parts = [blk for _, blk in read_blocks(arr, srt, p["chunk"])]
            out = np.empty((batch, *p["shape"]), np.float16)
            out[order] = np.concatenate(parts)  # back into the sampler's order
            read += out.nbytes
        return read

    t0 = time.perf_counter()
    in_mem = CachedRows({"mean": arr}, every, p["chunk"], in_memory=True)
    load_s = time.perf_counter() - t0

    def ours_memory() -> int:
        read = 0
        for _ in range(nb):
            idx, state["pos"] = sampler.take(state["pos"], batch)
            read += in_mem.take("mean", idx).nbytes
        return read

    return {"buffer": ours_buffer, "runs": ours_runs, "memory": ours_memory}, load_s


def _random_reads(
    stores: dict[str, Any], rng: np.random.Generator, p: dict[str, Any]
) -> dict[str, Callable[[], int]]:
    """The usual read paths in random batches: Zarr per sample, .npy memmap, safetensors.

    Each path returns the bytes of the samples it read.
    """
    from safetensors import safe_open

    n, batch, nb, per = p["n"], p["batch"], p["batches"], p["st_shard"]
    arr = stores["zarr"]
    mm = np.load(stores["npy"], mmap_mode="r")

    def random_batches() -> list[np.ndarray]:
        return [rng.choice(n, batch, replace=False) for _ in range(nb)]

    def zarr_random() -> int:
        return sum(np.stack([arr[int(i)] for i in idx]).nbytes for idx in random_batches())

    def npy_memmap() -> int:
        return sum(np.asarray(mm[np.sort(idx)]).nbytes for idx in random_batches())

    def safetensors_shards() -> int:
        read = 0
        for idx in random_batches():
            rows = []
            for i in idx:
                s, j = divmod(int(i), per)
                with safe_open(str(stores["shards"][s]), framework="np") as f:
                    flips = [f.get_slice(k)[j : j + 1] for k in ("latents", "latents_flip")]
                rows.append(np.stack(flips, axis=1))  # (1, F, d, h, w), as the other layouts
            read += np.concatenate(rows).nbytes
        return read

    return {"zarr": zarr_random, "npy": npy_memmap, "safetensors": safetensors_shards}


def _read_row(case: str, fn: Callable[[], int], ctx: BenchContext, **kw: Any) -> Row:
    """A timed ``read`` row that also records the bytes one call read (``bytes_per_call``)."""
    read = {"bytes": 0}

    def call() -> None:
        read["bytes"] = fn()

    row = timed_row("read", case, call, ctx, **kw)
    row.extra["bytes_per_call"] = int(read["bytes"])
    return row


def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure random-batch read throughput of each layout; returns (rows, params, notes)."""
    p = SHAPES[ctx.size]
    rng = np.random.default_rng(0)
    data = rng.standard_normal((p["n"], *p["shape"]), dtype=np.float32).astype(np.float16)
    notes: list[str] = []
    with scratch_space(ctx.workdir, "cache") as tmp:
        t0 = time.perf_counter()
        stores = _write_layouts(Path(tmp), data, p)
        notes.append(f"wrote {data.nbytes / 2**20:.1f} MiB per layout in "
                     f"{time.perf_counter() - t0:.1f} s (all reads below are warm)")  # fmt: skip
        kw = {"items": p["batch"] * p["batches"], "unit": "sample"}
        others = _random_reads(stores, rng, p)
        ours, load_s = _training_reads(stores["zarr"], p)
        rows = [
            _read_row("npy memmap", others["npy"], ctx, baseline=True, **kw),
            _read_row("zarr chunk buffer (ours, training path)", ours["buffer"], ctx, **kw),
            _read_row("zarr runs, no buffer (train.latents path)", ours["runs"], ctx, **kw),
            _read_row("zarr in memory (ours)", ours["memory"], ctx,
                      note=f"one-off load {load_s:.2f} s", **kw),
            _read_row("zarr random samples", others["zarr"], ctx, **kw),
            _read_row("safetensors shards (LightningDiT)", others["safetensors"], ctx,
                      **kw),
        ]  # fmt: skip
        rows[3].extra["load_s"] = load_s
    # reads only: nothing is compiled, whatever --compile asks (the result says what was run)
    params = {**{k: v for k, v in p.items() if k != "shape"}, "sample_shape": list(p["shape"]),
              "dtype": "float16", "sample_bytes": int(np.prod(p["shape"])) * 2,
              "compile": False}  # fmt: skip
    return fill_ratios(rows), params, notes
