"""Training data of the DiT: packed latents (and REPA target tokens) read from the cache.

RePack stage 2 (guanfangdong/RePack-then-Refine ``stage2``) trains on cached packed latents of
each image and of its mirror, normalised per channel. Here the latents come from
``latents/<pack-id>/{mean,std}`` (N, F, d, h, w) of a cache entry (DESIGN.md §4), normalised with
the *exact* stats that ``pack encode`` stored in the group attributes (never re-estimated), and
the REPA targets from ``features/<encoder>/tokens`` (N, F, T, C) of the same images: a sample's
random flip picks the same ``F`` slot of both, so latent and target always show the same image.

Posterior sampling (``latent_sampling``): ``mean`` trains on the posterior mean, ``sample`` on a
fresh sample ``mean + std·ε`` at every step, ``fixed`` on ONE sample per image and flip, as the
official latent cache stores (``stage2/extract_features.py`` encodes each image and its mirror
once with ``sample_posterior=True``; every epoch reads the same sample). Our ``fixed`` draws that
ε from a generator keyed by (run seed, cache row, flip) alone, so it is the same in every epoch,
with any number of processes and after a resume, without storing a second copy of the latents.

The reads are those of the one cache-backed dataset, ``data.cached.CachedRows``: chunk-aligned
blocks (the loop's block sampler uses ``block = chunk``), or the whole arrays loaded once
(``in_memory``; automatic up to ``data.cached.MEMORY_GB``).

Shapes: B batch, F flips, d latent channels, h×w latent grid, T encoder tokens, C token width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.cache.commands import entry_extract_command, features_extract_command
from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.partials import (
    check_partials,
    combine_partials,
    latents_producer,
    stats_match,
)
from repackctl.cache.store import PENDING, WRITTEN, ArrayGroup, DatasetEntry, list_entries
from repackctl.data.cached import MEMORY_GB, CachedRows, check_row_counts
from repackctl.errors import CacheError, ConfigError, DataError
from repackctl.pack.load import denormalise, pack_id_run_step
from repackctl.paths import cache_root

_PACK_ID_RE = r"--{run}-(\d{{7}})-[0-9a-f]{{8}}$"


# --------------------------------------------------------------------------- finding latents


@dataclass(frozen=True)
class LatentRef:
    """Where one packed-latent group lives: cache root, entry name and pack id."""

    root: str
    entry: str
    pack_id: str


def _group_time(grp: ArrayGroup) -> float:
    """Creation order of a group: its ``created`` attribute, else its metadata file's mtime."""
    created = grp.attrs.get("created")
    if isinstance(created, int | float):
        return float(created)
    store = grp.group.store
    root = getattr(store, "root", None)
    if root is not None:
        path = Path(str(root)) / grp.group.path / "zarr.json"
        if path.exists():
            return path.stat().st_mtime
    return 0.0


def pack_run_of(pack_id: str) -> str | None:
    """The pack run name inside ``<encoder-entry>--<run>-<step:07d>-<sha8>``, if it parses."""
    return pack_id_run_step(pack_id)[0]


def find_latents(
    root: str,
    entry: str | None = None,
    latents: str | None = None,
    pack_run: str | None = None,
) -> LatentRef:
    """Pick the packed latents to train on: ``latents`` by id, the newest of ``pack_run``, or the
    newest in the cache (optionally within ``entry``)."""
    entries = [e for e in list_entries(root) if entry is None or e == entry]
    if entry is not None and not entries:
        raise CacheError(
            f"cache entry {entry!r} not found (have: {', '.join(list_entries(root)) or 'none'})",
            "run `repackctl extract` for it, or check --entry / --cache",
        )
    candidates: list[tuple[float, str, str]] = []
    seen: list[str] = []
    for name in entries:
        ds = DatasetEntry.open(root, name)
        for pid in ds.latent_ids():
            seen.append(pid)
            if latents is not None and pid != latents:
                continue
            grp = ds.latents(pid)
            if pack_run is not None:
                run_attr = (grp.attrs.get("pack") or {}).get("run")
                by_name = re.search(_PACK_ID_RE.format(run=re.escape(pack_run)), pid)
                if run_attr is None or Path(str(run_attr)).name != pack_run:
                    if not by_name:
                        continue
            candidates.append((_group_time(grp), name, pid))
    if not candidates:
        if latents is not None:
            what = f"packed latents {latents!r}"
        elif pack_run is not None:
            what = f"packed latents of pack run {pack_run!r}"
        else:
            what = "packed latents"
        where = f" in entry {entry}" if entry else ""
        have = ", ".join(seen) or "none"
        run = pack_run or "RUN"
        raise CacheError(
            f"no {what}{where} in the cache {root} (have: {have})",
            f"encode them first: `repackctl pack encode --run {run}` (after `repackctl pack train`)",
        )
    if latents is not None and len(candidates) > 1:
        names = ", ".join(c[1] for c in candidates)
        raise ConfigError(
            f"packed latents {latents!r} exist in several entries ({names})",
            "choose one with --entry",
        )
    _, name, pid = max(_training_split(root, candidates) if entry is None else candidates)
    # the root absolute, as checkpoints record it (``describe``): a relative --cache read
    # again from another folder is another cache, with perhaps other images of this name
    return LatentRef(root=cache_root(root), entry=name, pack_id=pid)


def trained_latents(run_dir: Path, stage: str = "dit") -> tuple[str | None, str | None]:
    """(latents, entry) that the newest checkpoint of ``run_dir`` was trained on, when it holds a
    ``stage`` run; (None, None) for a new run (or another stage's folder).

    A run records the latents it resolved when it started (``dit.run.record_latents``); one
    started before that stores ``latents: None``, and without this its resume picked whatever
    latents were newest (another `pack encode` since: refused as a change of latents)."""
    from repackctl.train.checkpoint import latest_checkpoint, read_state

    latest = latest_checkpoint(run_dir, warn=None)
    extra = (read_state(latest).get("extra") or {}) if latest is not None else {}
    if extra.get("stage") != stage:
        return None, None
    cache = extra.get("cache") or {}
    return cache.get("latents") or None, cache.get("entry") or None


def _training_split(
    root: str, candidates: list[tuple[float, str, str]]
) -> list[tuple[float, str, str]]:
    """The candidates in ``train``-split entries: without ``--entry`` a DiT never trains on the
    val split's latents (``pack encode`` writes them for evaluation, often after the train
    split's), or a ``DataError`` naming the entries that hold latents."""
    split = {name: DatasetEntry.open(root, name).attrs.get("split") for _, name, _ in candidates}
    train = [c for c in candidates if split[c[1]] == "train"]
    if train:
        return train
    found = ", ".join(sorted({f"{n} (split {split[n]!r})" for _, n, _ in candidates}))
    runs = {pack_run_of(pid) for _, _, pid in candidates}  # the pack run, where one made them
    run = runs.pop() if len(runs) == 1 and None not in runs else "RUN"
    raise DataError(
        f"no train-split entry of the cache {root} holds these packed latents; only {found}",
        "pass --entry to train on one of them on purpose, or encode the train split: "
        f"`repackctl pack encode --run {run}`",
    )


# --------------------------------------------------------------------------- REPA targets


def find_features(ds: DatasetEntry, pack_id: str, lat_attrs: dict, features: str | None) -> str:
    """The features group that holds the REPA targets of these latents (see the error hint)."""
    have = ds.feature_ids()
    wanted = features
    if wanted is None:
        cache = lat_attrs.get("cache") or {}
        wanted = lat_attrs.get("features") or cache.get("features")
    if wanted is None:
        wanted = next(
            (f for f in sorted(have, key=len, reverse=True) if pack_id.startswith(f)), None
        )
    if wanted is None and len(have) == 1:
        wanted = have[0]
    if wanted is not None and wanted in have:
        return wanted
    enc_attrs = lat_attrs.get("encoder") if isinstance(lat_attrs.get("encoder"), dict) else {}
    encoder = enc_attrs.get("id")
    layer = None
    if wanted:
        bits = wanted.split("--")
        encoder = encoder or bits[0]
        layer = bits[1] if len(bits) > 1 else None
    own = wanted is not None and wanted == lat_attrs.get("features")  # the latents' encoder
    cmd = entry_extract_command(ds, encoder or "ENCODER", layer, enc_attrs if own else None)
    raise CacheError(
        f"REPA needs the encoder features {wanted or '(unknown encoder)'} of entry {ds.name}, "
        f"which are not in the cache (have: {', '.join(have) or 'none'})",
        f"run `{cmd}`, or train without REPA: --repa-weight 0",
    )


# --------------------------------------------------------------------------- the data


def _stats(
    group: ArrayGroup, ref: LatentRef, d: int, entry: DatasetEntry
) -> tuple[np.ndarray, np.ndarray]:
    stats = group.attrs.get("stats")
    redo = latents_producer(group.attrs, ref.pack_id, ref.entry)
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
        raise CacheError(
            f"packed latents {ref.pack_id} in {ref.entry} have no channel stats in their attributes",
            f"run {redo} to finish them (it writes the exact stats)",
        )
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    if mean.shape != (d,) or std.shape != (d,) or not (std > 0).all():
        raise CacheError(
            f"channel stats of {ref.pack_id} do not fit its {d} channels (or a std is ≤ 0)",
            f"re-encode with {redo}",
        )
    _check_stats(group, mean, std, ref, entry)
    return mean, std


def _check_stats(
    group: ArrayGroup, mean: np.ndarray, std: np.ndarray, ref: LatentRef, entry: DatasetEntry
) -> None:
    """The stats in the attributes (``zarr.json``, no checksum) are those of the per-shard sums
    ``pack encode`` stores in checksummed arrays: one changed digit there normalised every latent
    of a training, and the samples of the run, by another scale, silently. Latents without the
    sums (made before them) are taken as they are. A lost or corrupt chunk of the sums is
    refused first, as `pack encode` and `cache verify` do (``check_partials``: the chunk and
    `cache verify --repair`): read as zeros it would look like an edited zarr.json, whose hint
    (`pack encode` again) refuses the same lost chunk."""
    if "partial_sum" not in group.group:
        return
    producer = latents_producer(group.attrs, ref.pack_id, ref.entry)
    check_partials(group, entry, group.done_mask(), producer)
    if not stats_match({"mean": mean, "std": std}, combine_partials(group)):
        raise CacheError(
            f"the channel stats in the attributes of packed latents {ref.pack_id} in {ref.entry} "
            "differ from the checksummed sums they were computed from (zarr.json edited or "
            "damaged)",
            f"run {latents_producer(group.attrs, ref.pack_id, ref.entry)} to write them again "
            "from the sums",
        )


SAMPLINGS = ("mean", "sample", "fixed")
_FIXED_KEY = 0xF1CED  # tags the generators of the fixed posterior samples


def fixed_posterior_noise(seed: int, row: int, flip: int, shape: tuple[int, ...]) -> np.ndarray:
    """The ε of cache row ``row``'s fixed posterior sample in flip slot ``flip`` (``shape``,
    float32): a function of the run seed, the row and the flip only."""
    rng = np.random.default_rng([seed % 2**64, row, flip, _FIXED_KEY])
    return rng.standard_normal(shape, dtype=np.float32)


class LatentData(CachedRows):
    """Packed latents of one cache group (+ labels, + REPA tokens), normalised, flip-consistent.

    The cache-backed dataset (``data.cached.CachedRows``) over ``mean`` (+ ``std`` when sampling
    the posterior, + REPA ``tokens``): sample ``i`` of the training set is cache index
    ``indices[i]``: images written, latents (and, with REPA, features) written; skipped inputs
    are left out.
    """

    def __init__(
        self,
        ref: LatentRef,
        *,
        features: str | None = None,
        repa: bool = False,
        sampling: str = "mean",
        in_memory: bool | None = None,
        memory_gb: float = MEMORY_GB,
        flip: bool = True,
        buffer_blocks: int = 16,
        seed: int = 0,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ConfigError(
                f"unknown latent_sampling {sampling!r}", f"use one of {', '.join(SAMPLINGS)}"
            )
        self.seed = int(seed)  # keys the per-image posterior samples of ``fixed``
        self.ref = ref
        self.entry = DatasetEntry.open(ref.root, ref.entry)
        self.group = self.entry.latents(ref.pack_id)
        attrs = self.group.attrs
        self.attrs = attrs
        if "mean" not in self.group.group:
            raise CacheError(
                f"packed latents {ref.pack_id} have no 'mean' array",
                f"run {latents_producer(attrs, ref.pack_id, ref.entry)}",
            )
        check_row_counts(self.entry, self.group)  # an edited zarr.json shape: named, no traceback
        mean_arr = self.group["mean"]
        n, f, d, h, w = mean_arr.shape
        self.flips, self.shape = int(f), (int(d), int(h), int(w))
        self.stats_mean, self.stats_std = _stats(self.group, ref, d, self.entry)
        self.sampling = sampling
        if sampling != "mean" and "std" not in self.group.group:
            raise CacheError(
                f"packed latents {ref.pack_id} store no posterior std (a PCA pack is "
                f"deterministic), so latent_sampling {sampling} has nothing to sample",
                "train on the mean: --latent-sampling mean",
            )
        self.flip = flip and self.flips > 1
        #: why a flip that was asked for cannot be applied (None: it is, or none was asked for)
        self.flip_off: str | None = None
        if flip and not self.flip:
            self.flip_off = f"packed latents {ref.pack_id} hold no mirrored copy"

        ok, arrays = self._usable(mean_arr, n, repa, features)
        indices = np.flatnonzero(ok).astype(np.int64)  # (N_valid,) cache indices
        if len(indices) == 0:
            raise CacheError(
                f"no usable samples in {ref.entry} for latents {ref.pack_id}",
                "check `repackctl cache info`; every sample was skipped or is pending",
            )
        redo = repair_hint(self.entry.name, "the same `repackctl extract`")
        label = f"cache entry {self.entry.name} labels"  # a lost chunk must not read as class 0
        labels = GuardedArray(self.entry.labels, ok, label, redo)[:]
        self.labels = np.asarray(labels, dtype=np.int64)[indices]  # (N,)
        self.class_names = self.entry.class_names
        k = int(self.entry.attrs.get("num_classes") or 0)
        self.num_classes = max(k, int(self.labels.max()) + 1 if len(self.labels) else 1, 1)
        self.token_shape = tuple(arrays["tokens"].shape[2:]) if repa else None
        # LRU chunk buffers: twice the sampler's shuffle buffer of chunk-sized blocks
        super().__init__(
            self._guard(arrays, ok),
            indices,
            self.entry.chunk,
            in_memory=in_memory,
            memory_gb=memory_gb,
            buffer_chunks=2 * buffer_blocks,
        )

    def _usable(
        self, mean_arr: Any, n: int, repa: bool, features: str | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Rows whose image, latents (and REPA tokens) are written, and the arrays to read."""
        ref, attrs = self.ref, self.attrs
        done = self.group.done_mask()
        if (done == PENDING).any():
            missing = int((done == PENDING).sum())
            raise CacheError(
                f"packed latents {ref.pack_id} are incomplete ({missing} of {n} samples pending)",
                f"run {latents_producer(attrs, ref.pack_id, ref.entry)} again to finish them",
            )
        ok = (self.entry.done_mask() == WRITTEN) & (done == WRITTEN)
        self.features_id: str | None = None
        arrays = {"mean": mean_arr}
        if self.sampling != "mean":
            arrays["std"] = self.group["std"]
        if repa:
            self.features_id = find_features(self.entry, ref.pack_id, attrs, features)
            feats = self.entry.features(self.features_id)
            check_row_counts(self.entry, self.group, feats)
            fdone = feats.done_mask()
            if (fdone == PENDING).any():
                cmd = features_extract_command(self.entry, self.features_id)
                raise CacheError(
                    f"features {self.features_id} of {ref.entry} are incomplete",
                    f"run `{cmd}` again to finish them",
                )
            ok &= fdone == WRITTEN
            tokens = feats["tokens"]
            if tokens.shape[1] < self.flips:
                if self.flip:  # features without the mirrored copy: no flip augmentation
                    self.flip_off = f"REPA features {self.features_id} hold no mirrored copy"
                self.flip = False
            arrays["tokens"] = tokens
        return ok, arrays

    def _guard(self, arrays: dict, ok: np.ndarray) -> dict[str, GuardedArray]:
        """Reads that refuse a lost or corrupt chunk of a used row (never zeros)."""
        out = {}
        for k, a in arrays.items():
            if k == "tokens":
                where = f"features/{self.features_id}"
                redo = f"the `{features_extract_command(self.entry, self.features_id)}`"
            else:
                where = f"latents/{self.ref.pack_id}"
                redo = latents_producer(self.attrs, self.ref.pack_id, self.ref.entry)
            label = f"cache entry {self.entry.name} {where}/{k}"
            out[k] = GuardedArray(a, ok, label, repair_hint(self.entry.name, redo))
        return out

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def norm_mean(self) -> torch.Tensor:
        return torch.from_numpy(self.stats_mean).float().view(1, -1, 1, 1)  # (1, d, 1, 1)

    @property
    def norm_std(self) -> torch.Tensor:
        return torch.from_numpy(self.stats_std).float().view(1, -1, 1, 1)  # (1, d, 1, 1)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Raw packed latents → zero-mean unit-std channels (the DiT's space)."""
        return (z - self.norm_mean.to(z)) / self.norm_std.to(z)  # (B, d, h, w)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalise`` (what the decoder and the refiner take)."""
        return denormalise(x, self.stats_dict())  # (B, d, h, w)

    # ---- reading -------------------------------------------------------------------------------
    def read(
        self, rows: np.ndarray, rngs: list[np.random.Generator], with_tokens: bool
    ) -> dict[str, torch.Tensor]:
        """A batch: normalised latents ``x`` (B, d, h, w), labels ``y`` (B,), ``flip`` (B,), and
        ``tokens`` (B, T, C) of the same flip when asked. Each sample's flip (and posterior noise)
        is drawn from its own generator in ``rngs``, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        flips = np.array(
            [int(r.random() < 0.5) if self.flip else 0 for r in rngs], dtype=np.int64
        )  # (B,)
        mean = self.take_flip("mean", rows, flips)  # (B, d, h, w) float16
        z = torch.from_numpy(mean.astype(np.float32))  # (B, d, h, w)
        if self.sampling != "mean":
            std = torch.from_numpy(self.take_flip("std", rows, flips).astype(np.float32))
            z = z + std * torch.from_numpy(self._posterior_noise(rows, flips, rngs))  # (B, d, h, w)
        out = {
            "x": self.normalise(z),  # (B, d, h, w)
            "y": torch.from_numpy(self.labels[rows]),  # (B,)
            "flip": torch.from_numpy(flips),  # (B,)
        }
        if with_tokens:
            tok = self.take_flip("tokens", rows, flips)  # (B, T, C) float16
            out["tokens"] = torch.from_numpy(tok.astype(np.float32))
        return out

    def _posterior_noise(
        self, rows: np.ndarray, flips: np.ndarray, rngs: list[np.random.Generator]
    ) -> np.ndarray:
        """ε (B, d, h, w) of the posterior samples: drawn from each sample's step generator
        (``sample``), or from a generator of (seed, cache row, flip) only (``fixed``)."""
        if self.sampling == "sample":
            return np.stack([r.standard_normal(self.shape, dtype=np.float32) for r in rngs])
        return np.stack(
            [fixed_posterior_noise(self.seed, int(self.indices[row]), int(f), self.shape)
             for row, f in zip(rows.tolist(), flips.tolist(), strict=True)]
        )  # fmt: skip

    def describe(self) -> dict:
        """JSON-safe ids of what is read (stored in checkpoints)."""
        return {
            "root": cache_root(self.ref.root),  # absolute (URLs as given), as the pack's
            "entry": self.ref.entry,
            "latents": self.ref.pack_id,
            "features": self.features_id,
        }

    def stats_dict(self) -> dict:
        return {"mean": self.stats_mean.tolist(), "std": self.stats_std.tolist()}
