"""Per-shard partial sums of a latents group and the exact channel stats they add up to.

``pack encode`` and the pixel latents (``pack.pixels``) store, per shard, the float64 sum and
sum of squares of every channel of the stored float16 values (valid rows, both flips, all
positions) in small checksummed arrays; once every row is done the stats are those sums added
in shard order, recorded in the group's attributes (``stats``). Shared by both writers (which
refuse stats over lost, corrupt or non-finite sums), by the trainer, and by `cache verify`
(which checks the recorded stats against the sums).

Legend: S shards, d channels, m rows of a shard, F flips, h×w grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from repackctl.cache.integrity import Damage, repair_hint, scan_array
from repackctl.cache.store import WRITTEN, ArrayGroup, DatasetEntry, checksummed
from repackctl.errors import CacheError
from repackctl.run_files import pack_id_run_step

if TYPE_CHECKING:
    import zarr

PARTIAL_ARRAYS = ("partial_sum", "partial_sumsq", "partial_count")
STATS_RTOL = 1e-6  # recorded stats vs the sums: the recomputation is exact; JSON keeps floats


def latents_producer(
    attrs: Mapping[str, Any], pack_id: str | None = None, entry: str | None = None
) -> str:
    """The command that (re)writes a latents group with attributes ``attrs`` in cache entry
    ``entry``: `pack encode` of the pack checkpoint it records (``RUN/checkpoints/step-N``: the
    run's newest checkpoint would write another group; else the run inside ``pack_id``), with
    ``--entry`` (without it, `pack encode` encodes the run's training entry), or, for the pixel
    latents of the reproduction study (no pack run), the benchmark call that writes them."""
    pack = attrs.get("pack") or {}
    if pack.get("method") == "pixels" and not pack.get("run"):
        return "the same `python benchmarks/reproduce_small.py` call (it writes pixel latents)"
    run, step = pack.get("run"), pack.get("step")
    if run and isinstance(step, int) and pack.get("which", "ema") == "ema":
        run = f"{run}/checkpoints/step-{step:07d}"
    run = run or pack_id_run_step(pack_id)[0] or "RUN"
    where = f" --entry {entry}" if entry else ""
    return f"`repackctl pack encode --run {run}{where}`"


def channel_sums(means: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel float64 sum and sum of squares of (m, F, d, h, w) means over valid rows."""
    z = means[valid].astype(np.float64)  # (v, F, d, h, w)
    axes = (0, 1, 3, 4)
    count = int(z.shape[0] * z.shape[1] * z.shape[3] * z.shape[4]) if z.size else 0
    return z.sum(axis=axes), (z * z).sum(axis=axes), count


def add_partial_arrays(group: zarr.Group, shards: int, channels: int) -> None:
    """The per-shard sums of a new latents group: one checksummed chunk per shard row, so each
    writer touches only its own files."""
    for name in ("partial_sum", "partial_sumsq"):
        group.create_array(
            name, shape=(shards, channels), chunks=(1, channels), dtype="float64",
            fill_value=0.0, compressors=checksummed(),
        )  # fmt: skip
    group.create_array(
        "partial_count", shape=(shards,), chunks=(1,), dtype="int64", fill_value=0,
        compressors=checksummed(),
    )  # fmt: skip


def write_partials(grp: ArrayGroup, shard: int, values: np.ndarray, valid: np.ndarray) -> None:
    """Store the sums of shard ``shard``'s (m, F, d, h, w) ``values`` over its ``valid`` rows
    (before its rows are marked done)."""
    s, sq, count = channel_sums(values, valid)
    grp["partial_sum"][shard] = s
    grp["partial_sumsq"][shard] = sq
    grp["partial_count"][shard] = count


def combine_partials(grp: Any) -> dict[str, Any]:
    """Exact channel stats of packed latents (``grp``: their cache ``ArrayGroup``) from the
    per-shard partial sums that ``pack encode`` stores in checksummed arrays, added in shard
    order. The stats in the group's attributes are these; readers check them against it.

    A chunk of the sums that fails its checksum is a ``CacheError`` naming the array and
    `cache verify` (which names the chunk and its repair), not zarr's ``ValueError``; callers
    that can, run :func:`check_partials` first (lost chunks read as zeros here)."""
    psum = _read_partial(grp, "partial_sum")  # (S, d) float64
    psq = _read_partial(grp, "partial_sumsq")
    pcount = _read_partial(grp, "partial_count")
    total = np.zeros(psum.shape[1], np.float64)
    total_sq = np.zeros(psum.shape[1], np.float64)
    count = 0
    for k in range(psum.shape[0]):  # a fixed order: the same float64 result for any world size
        total += psum[k]
        total_sq += psq[k]
        count += int(pcount[k])
    if count == 0:
        entry, _, path = _where(grp)
        raise CacheError(
            f"cache entry {entry}: {path}: no valid samples to compute latent stats from (every "
            "row was skipped, or the chunks of partial_count are lost)",
            f"run `repackctl cache verify {entry}`: it names a lost chunk and the commands that "
            "write it again",
        )
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "count": count,
        "reduction": "float64 per-shard sums over valid samples, both flips, all positions, "
        "combined in shard order; population std (ddof 0)",
    }


def _where(grp: Any) -> tuple[str, str, str]:
    """(entry, "/", path inside it) of a latents group (an ``ArrayGroup`` or a zarr group)."""
    return str(getattr(grp, "group", grp).path).partition("/")


def _read_partial(grp: Any, name: str) -> np.ndarray:
    """Array ``name`` of the per-shard sums, whole; an undecodable chunk is a ``CacheError``."""
    try:
        return grp[name][:]
    except Exception as e:  # a checksum mismatch or bytes that do not decode
        entry, _, path = _where(grp)
        raise CacheError(
            f"cache entry {entry}: {path}/{name}: corrupt or truncated chunk ({e})",
            f"run `repackctl cache verify {entry}`: it names the chunk and the commands that "
            "write it again",
        ) from e


def partials_damage(grp: ArrayGroup, entry: DatasetEntry, done: np.ndarray) -> list[Damage]:
    """The lost or corrupt chunks of the partial sums of shards holding written rows (``done``:
    the group's done codes), each with the sample rows of its shards."""
    shard, n = entry.shard, entry.n
    written = done == WRITTEN
    per_shard = np.array([written[s : s + shard].any() for s in range(0, n, shard)])
    label = f"latents/{grp.group.basename}"
    out = []
    for name in PARTIAL_ARRAYS:
        for d in scan_array(grp[name], per_shard, f"{label}/{name}"):
            out.append(Damage(d.array, d.key, d.kind, d.lo * shard, min(d.hi * shard, n)))
    return out


def check_partials(grp: ArrayGroup, entry: DatasetEntry, done: np.ndarray, producer: str) -> None:
    """Refuse (``CacheError``, naming the chunk and the repair: `cache verify --repair`, then
    ``producer``) when a per-shard sum of a shard holding written rows is lost or corrupt: read
    as zeros, the stats would be computed over the other shards only, silently, and a training
    reading them would find them consistent with the sums."""
    damage = partials_damage(grp, entry, done)
    if damage:
        d = damage[0]
        raise CacheError(
            f"cache entry {entry.name}: {d.array}: {d.kind} chunk {d.key} (the sums of rows "
            f"{d.lo}–{d.hi - 1}): the channel stats would leave those rows out",
            repair_hint(entry.name, producer),
        )


def shard_rows(entry: DatasetEntry, shards: Iterable[int]) -> str:
    """``0–7, 16–23``: the sample rows of the entry's ``shards``, for a message."""
    shard, n = entry.shard, entry.n
    return ", ".join(f"{k * shard}–{min((k + 1) * shard, n) - 1}" for k in shards)


def check_finite_sums(grp: ArrayGroup, entry: DatasetEntry, hint: str) -> None:
    """Refuse (``CacheError`` with ``hint``) stats from per-shard sums that hold NaN/inf: every
    channel's mean and std would be NaN. Names the shards' rows."""
    sums, squares = grp["partial_sum"][:], grp["partial_sumsq"][:]
    finite = np.isfinite(sums).all(1) & np.isfinite(squares).all(1)
    if finite.all():
        return
    rows = shard_rows(entry, np.flatnonzero(~finite))
    raise CacheError(
        f"cache entry {entry.name}: latents/{grp.group.basename}: the latents of rows {rows} are "
        "not all finite (NaN/inf), so the channel stats would be NaN; nothing recorded",
        hint,
    )


def checked_stats(
    grp: ArrayGroup, entry: DatasetEntry, done: np.ndarray, producer: str, nonfinite_hint: str
) -> dict[str, Any]:
    """``combine_partials`` once ``check_partials`` and ``check_finite_sums`` pass."""
    check_partials(grp, entry, done, producer)
    check_finite_sums(grp, entry, nonfinite_hint)
    return combine_partials(grp)


def stats_match(recorded: Any, exact: dict[str, Any]) -> bool:
    """Whether recorded stats (a group's ``stats`` attribute) are those of the sums (``exact``):
    mean and std within ``STATS_RTOL`` (what `train dit` accepts), the same count."""
    if not isinstance(recorded, dict):
        return False
    try:
        mean = np.asarray(recorded["mean"], np.float64)
        std = np.asarray(recorded["std"], np.float64)
    except (KeyError, TypeError, ValueError):
        return False
    if mean.shape != (len(exact["mean"]),) or std.shape != mean.shape:
        return False
    if "count" in recorded and recorded["count"] != exact["count"]:
        return False
    return bool(
        np.allclose(mean, exact["mean"], rtol=STATS_RTOL, atol=0.0)
        and np.allclose(std, exact["std"], rtol=STATS_RTOL, atol=0.0)
    )


def shards_off_data(grp: ArrayGroup, entry: DatasetEntry, done: np.ndarray) -> list[int]:
    """The shards whose stored partial sums are not those of the stored ``mean`` values of their
    written rows (reads the whole ``mean`` array, shard by shard; a shard that cannot be read is
    left out: its damaged chunk is reported by itself)."""
    shard, n = entry.shard, entry.n
    psum, psq = grp["partial_sum"][:], grp["partial_sumsq"][:]
    pcount = grp["partial_count"][:]
    off = []
    for k, lo in enumerate(range(0, n, shard)):
        hi = min(lo + shard, n)
        valid = done[lo:hi] == WRITTEN
        try:
            values = np.asarray(grp["mean"][lo:hi])  # (m, F, d, h, w)
        except Exception:  # a damaged chunk: `cache verify` reports it, its repair rewrites it
            continue
        s, sq, count = channel_sums(values, valid)
        same = int(pcount[k]) == count and np.allclose(psum[k], s, rtol=1e-9, atol=1e-9)
        if not (same and np.allclose(psq[k], sq, rtol=1e-9, atol=1e-9)):
            off.append(k)
    return off
