"""Stage-1 data: cached frozen-encoder tokens and the matching cached images, no encoder in the loop.

RePack stage 1 (guanfangdong/RePack-then-Refine, ``stage1/``) runs DINOv3 on every training step
with a random horizontal flip. Here ``repackctl extract`` already stored the tokens of the image
and of its mirror (``features/<id>/tokens``, F = 2), so a sample is: pick one of the F flips with
the training loop's generator, take those tokens, and flip the cached image the same way.

Only samples written by extract (``done == 1`` for the image and the features) are used; skipped
inputs and unfinished shards are left out. The reads are those of the one cache-backed dataset,
``data.cached.CachedRows``: whole arrays in memory (small caches, ``pack.in_memory`` /
``memory_gb``) or whole Zarr chunks through an LRU buffer.

This module also finds the cache entry and feature set a pack command works on, with errors whose
hint is the exact ``repackctl extract …`` command that creates what is missing.

Legend: N samples, F flips, T tokens, C token channels, R image side.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repackctl.cache.commands import (
    dataset_base,
    encoder_flag,
    entry_source,
    extract_command,
    features_extract_command,
)
from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.store import PENDING, ArrayGroup, DatasetEntry, list_entries
from repackctl.data.cached import (
    MEMORY_GB,
    CachedRows,
    check_row_counts,
    draw_flips,
    images_to_float,
    mirror,
    written_rows,
)
from repackctl.encoder_names import encoder_spec_id
from repackctl.errors import CacheError, ConfigError, RepackError
from repackctl.paths import cache_root, entry_name
from repackctl.settings import Settings

# ---------------------------------------------------------------------------- locating features

# The attributes `repackctl extract` records that say which data an entry and a feature set hold
# (not where they lie or how they were written): a copied or moved cache keeps them verbatim,
# another extract under the same names (another seed, folder, subset or encoder) changes them.
ENTRY_CONTENT_KEYS = ("dataset", "split", "resolution", "n", "source")
FEATURES_CONTENT_KEYS = ("encoder", "flips", "tokens", "dim")
CONTENT_ROWS = 8  # samples whose bytes ``PackData.rows_digest`` spot-checks


def content_digest(attrs: dict[str, Any], keys: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) of ``keys`` of ``attrs`` in canonical JSON."""
    blob = json.dumps({k: attrs.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_content(entry: DatasetEntry, feats: ArrayGroup) -> dict[str, str]:
    """Location-independent identity of an entry's data and of one feature set in it."""
    return {
        "entry": content_digest(dict(entry.attrs), ENTRY_CONTENT_KEYS),
        "features": content_digest(dict(feats.attrs), FEATURES_CONTENT_KEYS),
    }


@dataclass
class FeatureRef:
    """One feature set in one cache entry, plus how to recreate it."""

    entry: DatasetEntry
    features_id: str
    feats: ArrayGroup
    encoder_attrs: dict[str, Any]
    # the user-level settings that made it (for hints and for sibling splits)
    source: dict[str, Any]
    note: str | None = None  # how it was chosen, when the settings did not name it

    @property
    def cache(self) -> dict[str, str]:
        """``{"root", "entry", "features"}`` as stored in checkpoints (DESIGN.md §6)."""
        return {
            "root": cache_root(self.entry.root),
            "entry": self.entry.name,
            "features": self.features_id,
        }

    @property
    def content(self) -> dict[str, str]:
        """Digests of the entry's and the features' content attributes (``entry_content``):
        what a resume compares, wherever the cache lies now."""
        return entry_content(self.entry, self.feats)

    @property
    def grid(self) -> int:
        return int(self.encoder_attrs["grid"])

    @property
    def tokens_shape(self) -> tuple[int, ...]:
        return tuple(self.feats["tokens"].shape)  # (N, F, T, C)


def _source_settings(settings: Settings) -> dict[str, Any]:
    cfg = settings.pack
    from repackctl.data.sources import default_resolution

    return {
        "encoder": cfg.encoder,
        "weights": cfg.weights,
        "layer": cfg.layer,
        "data": cfg.data,
        "split": cfg.split,
        "resolution": cfg.resolution or default_resolution(cfg.data),
        "resolution_given": cfg.resolution,
        "num": cfg.num,
    }


def _hint(source: dict[str, Any], split: str | None = None) -> str:
    cmd = extract_command(
        source["encoder"],
        source["data"],
        split or source["split"],
        source.get("resolution_given"),
        source["num"],
        source["weights"],
        source["layer"],
    )
    return f"run `{cmd}` first"


# what a pack run's recorded relative --weights is refused with (``recorded_weights``)
WEIGHTS_HINT = "pass --weights with the file's absolute path"


def recorded_weights(extra: dict[str, Any], run: str) -> Any:
    """The ``--weights`` that the checkpoint ``extra`` of the pack run ``run`` records
    (``source.weights``), as it can be read from this folder.

    New runs record a file by its absolute path (``repackctl.settings.pack``); runs before kept
    it as typed, relative to a folder they did not record: such a path is taken only where it
    names the recorded file (its sha256, ``encoder.weights_sha256``), else a ConfigError
    (``repackctl.run_files.recorded_file``). Values that name no file (none, ``random``, a
    plugin's own) are returned as recorded."""
    from pathlib import Path

    from repackctl.run_files import recorded_file

    value = (extra.get("source") or {}).get("weights")
    encoder = extra.get("encoder") or {}
    if not isinstance(value, str) or not str(encoder.get("weights", "")).startswith("file:"):
        return value
    if Path(value).expanduser().is_absolute():
        return value
    sha = encoder.get("weights_sha256")
    record = f"pack run {run}: its recorded --weights"
    found = recorded_file(value, record, WEIGHTS_HINT, sha if isinstance(sha, str) else None)
    return str(found)


def features_id_for(source: dict[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    """Features id and encoder attrs that ``repackctl extract`` gives these settings."""
    from repackctl.encoders.load import make_encoder

    enc = make_encoder(
        source["encoder"], source["weights"], source["layer"], source["resolution"], seed
    )
    return enc.spec.entry_id(), enc.spec.attrs()


def dataset_name_for(source: dict[str, Any], seed: int, imagenet_root: str | None) -> str:
    """The dataset part of the entry name that ``repackctl extract`` gives these settings."""
    from repackctl.data.sources import dataset_label, make_source

    src = make_source(source["data"], source["split"], source["num"], seed, imagenet_root)
    return dataset_label(src, source["num"])


def open_features(
    root: str, entry_name_: str, features_id: str | None, hint: str
) -> tuple[DatasetEntry, ArrayGroup, str]:
    """Open ``entry``/``features``; missing or unfinished ones raise CacheError with ``hint``."""
    if entry_name_ not in list_entries(root):
        have = ", ".join(list_entries(root)) or "none"
        raise CacheError(f"cache entry {entry_name_!r} not found in {root} (have: {have})", hint)
    entry = DatasetEntry.open(root, entry_name_)
    if features_id is None:
        ids = entry.feature_ids()
        if len(ids) != 1:
            raise CacheError(
                f"{entry_name_} holds {len(ids)} feature sets ({', '.join(ids) or 'none'})",
                "name one with --features, or " + hint,
            )
        features_id = ids[0]
    if features_id not in entry.feature_ids():
        have = ", ".join(entry.feature_ids()) or "none"
        raise CacheError(f"no features {features_id!r} in {entry_name_} (have: {have})", hint)
    feats = entry.features(features_id)
    if (feats.done_mask() == PENDING).any():
        pending = int((feats.done_mask() == PENDING).sum())
        # the command that made these features (as recorded), not one built from the settings
        # given now: with --entry/--features those name another encoder, size or split
        raise CacheError(
            f"features {features_id} in {entry_name_} are unfinished ({pending} samples pending)",
            f"run `{features_extract_command(entry, features_id)}` again to finish it",
        )
    return entry, feats, features_id


def find_entry(
    root: str,
    dataset: str,
    split: str,
    resolution: int,
    features_id: str | None,
    hint: str,
    exact_size: bool | None = None,
) -> str:
    """Name of the entry of ``split`` at ``resolution`` holding ``features_id``.

    The exact name ``extract`` would give wins; otherwise a unique entry of the same dataset with
    any subset size (``builtin-n48`` when ``--num`` was not repeated). Several: an error asking
    for ``--entry``. ``exact_size`` (default: when ``dataset`` names a size, ``-nN``, as it does
    when ``--num`` was given) allows no other size: one is an error naming the entries there are.
    """
    exact = entry_name(dataset, split, resolution)
    names = list_entries(root)
    if exact in names:
        return exact
    found = _same_dataset(root, names, dataset, split, resolution, features_id)
    if exact_size is None:
        exact_size = dataset_base(dataset) != dataset
    if exact_size and found:
        raise CacheError(
            f"no cache entry {exact!r} of exactly that size in {root}; other sizes there: "
            f"{', '.join(found)}",
            f"{hint}, or drop -n to use {found[0]}" if len(found) == 1 else hint,
        )
    if len(found) == 1:
        return found[0]
    if found:
        raise CacheError(f"several cache entries fit ({', '.join(found)})", "name one with --entry")
    have = ", ".join(names) or "none"
    raise CacheError(
        f"no cache entry {exact!r} with features {features_id} in {root} (have: {have})", hint
    )


def _same_dataset(
    root: str,
    names: list[str],
    dataset: str,
    split: str,
    resolution: int,
    features_id: str | None,
) -> list[str]:
    """Entries of ``split`` at ``resolution`` of ``dataset`` with any subset size (holding
    ``features_id`` when one is named)."""
    found = []
    for name in names:
        a = DatasetEntry.open(root, name).attrs
        if a.get("split") != split or a.get("resolution") != resolution:
            continue
        if dataset_base(str(a.get("dataset", ""))) != dataset_base(dataset):
            continue
        if features_id is None or features_id in DatasetEntry.open(root, name).feature_ids():
            found.append(name)
    return found


def locate_features(settings: Settings) -> FeatureRef:
    """The cache entry and feature set named by ``settings.pack`` (the training split)."""
    cfg = settings.pack
    source = _source_settings(settings)
    hint = _hint(source)
    features_id = cfg.features or features_id_for(source, settings.seed)[0]
    note = None
    if cfg.entry:
        name = cfg.entry
    else:
        try:
            dataset = dataset_name_for(source, settings.seed, settings.imagenet_root)
            name = find_entry(
                settings.cache,
                dataset,
                cfg.split,
                source["resolution"],
                features_id,
                hint,
                exact_size=cfg.num is not None,  # -n given: that size or nothing
            )
        except RepackError:
            if SOURCE_KEYS & cfg.model_fields_set:
                raise  # the user named the data: no guessing
            name, features_id = newest_features(settings.cache, cfg.split)
            note = (
                f"using cache entry {name} / {features_id}, the newest with complete features "
                "(the defaults name no extracted data; pass --entry/--features to choose)"
            )
    entry, feats, features_id = open_features(settings.cache, name, features_id, hint)
    source = {**source, **_source_of(entry, feats)} if note else source
    return FeatureRef(entry, features_id, feats, feats.attrs["encoder"], source, note)


def encoder_made_features(settings: Settings, encoder: str, features_id: str) -> bool:
    """Whether ``--encoder encoder`` names the encoder that made the features ``features_id``
    (``pack train --features F --encoder E`` keeps such an encoder and refuses another).

    The two names are compared by what they stand for, the encoder's spec id (the first part
    of a features id), read from the name without building the encoder
    (``encoder_names.encoder_spec_id``): ``dinov3`` and ``timm:vit_base_patch16_dinov3`` are
    both ``dinov3-vitb16``, whichever of them made the features. A name whose spec id only the
    built encoder tells (``builtin``, a plugin's) is that id itself or the ``--encoder`` the
    cache records for a group of that id (``cache.commands.encoder_flag``), in the entry
    ``settings.pack.entry`` names, else in any. Features the cache does not hold (or holds
    damaged) count as made by it: the command refuses them itself, and says so."""
    spec_id = features_id.split("--")[0]
    given = encoder_spec_id(encoder)
    if given is not None:
        return given == spec_id
    if encoder == spec_id:
        return True
    entries = list_entries(settings.cache)
    names = [settings.pack.entry] if settings.pack.entry in entries else entries
    for name in names:
        try:
            entry = DatasetEntry.open(settings.cache, name)
            if features_id not in entry.feature_ids():
                continue
            return encoder_flag(dict(entry.features(features_id).attrs), features_id) == encoder
        except RepackError:  # a damaged entry: the command names it if it reads it
            continue
    return True


# settings that name the data: when one is given, nothing is chosen for the user
SOURCE_KEYS = {"entry", "features", "data", "encoder", "weights", "layer", "resolution", "num"}


def newest_features(root: str, split: str) -> tuple[str, str]:
    """(entry, features id) of the newest complete feature set of ``split`` in the cache.

    This is how stages chain: after `extract --data imagefolder:… --resolution 64`, a bare
    `pack train` packs those features. None at all: a CacheError listing what the cache holds.
    """
    found = []
    for name in list_entries(root):
        entry = DatasetEntry.open(root, name)
        if entry.attrs.get("split") != split:
            continue
        for fid in entry.feature_ids():
            feats = entry.features(fid)
            if not (feats.done_mask() == PENDING).any():
                found.append((_mtime(root, name, "features", fid), name, fid))
    if not found:
        have = ", ".join(list_entries(root)) or "none"
        raise CacheError(
            f"no complete {split} features in the cache {root} (entries: {have})",
            "run `repackctl extract` first (with --split for another split)",
        )
    found.sort()
    return found[-1][1], found[-1][2]


def _mtime(root: str, *parts: str) -> float:
    """Modification time of a group on a local root (0 on remote stores: then the last listed)."""
    from repackctl.paths import is_url, local_path

    path = local_path(root).joinpath(*parts)
    return 0.0 if is_url(root) or not path.exists() else path.stat().st_mtime


def _source_of(entry: DatasetEntry, feats: ArrayGroup) -> dict[str, Any]:
    """The extract settings recorded in an entry, for hints and sibling splits."""
    src = entry_source(entry)
    enc = feats.attrs.get("encoder", {})
    return {"data": src["data"], "resolution": entry.resolution,
            "resolution_given": entry.resolution, "encoder": enc.get("id", "builtin")}  # fmt: skip


def sibling_entry(
    root: str, ref_cache: dict[str, str], source: dict[str, Any], split: str
) -> tuple[DatasetEntry, ArrayGroup]:
    """The entry of another ``split`` with the same features as a pack run's training entry
    (e.g. ``builtin-n24--val`` beside ``builtin-n48--train``)."""
    train = DatasetEntry.open(root, ref_cache["entry"])
    hint = _hint(source, split)
    dataset = str(train.attrs.get("dataset", ""))
    name = find_entry(
        root, dataset, split, train.resolution, ref_cache["features"], hint, exact_size=False
    )
    entry, feats, _ = open_features(root, name, ref_cache["features"], hint)
    return entry, feats


# ---------------------------------------------------------------------------- reading samples


def valid_indices(entry: DatasetEntry, feats: ArrayGroup) -> np.ndarray:
    """Cache indices whose image and features were both written (int64, ascending); arrays of
    the entry and the group that hold different numbers of rows are refused, naming them."""
    check_row_counts(entry, feats)
    return written_rows(entry.done_mask(), feats.done_mask())


class PackData(CachedRows):
    """Training samples for stage 1: ``(tokens (B, T, C), images (B, 3, R, R))`` by position.

    The cache-backed dataset (``data.cached.CachedRows``) over ``tokens`` and ``images`` at the
    rows where both were written; ``index`` is the list of those cache rows.
    """

    def __init__(
        self,
        entry: DatasetEntry,
        feats: ArrayGroup,
        in_memory: bool | None = None,
        memory_gb: float = MEMORY_GB,
        buffer_chunks: int = 32,
    ) -> None:
        self.entry = entry
        index = valid_indices(entry, feats)
        if len(index) == 0:
            raise CacheError(
                f"no usable samples in {entry.name} (nothing written or everything skipped)",
                "run `repackctl cache info` to see what the entry holds",
            )
        used = np.zeros(entry.n, bool)
        used[index] = True
        fid = feats.group.basename
        redo = repair_hint(entry.name, "the same `repackctl extract`")
        tokens = GuardedArray(feats["tokens"], used, f"{entry.name} features/{fid}/tokens", redo)
        images = GuardedArray(entry.images, used, f"{entry.name} images", redo)
        self.flips = int(tokens.shape[1])
        self.tokens_shape = tuple(tokens.shape[2:])  # (T, C)
        self.resolution = int(images.shape[1])
        super().__init__(
            {"tokens": tokens, "images": images},
            index,
            entry.chunk,
            in_memory=in_memory,
            memory_gb=memory_gb,
            buffer_chunks=buffer_chunks,
        )

    @property
    def index(self) -> np.ndarray:
        return self.indices

    @functools.cached_property
    def rows_digest(self) -> str:
        """sha256 (16 hex digits) of which rows are used and of the bytes (tokens, images) of
        the first ``CONTENT_ROWS``: a spot check of the data themselves, wherever they lie."""
        tokens, images = self.raw(np.arange(min(CONTENT_ROWS, len(self.indices))))
        digest = hashlib.sha256(np.ascontiguousarray(self.indices, dtype="<i8").tobytes())
        for rows in (tokens, images):  # (b, F, T, C) float16, (b, R, R, 3) uint8
            digest.update(np.ascontiguousarray(rows).tobytes())
        return digest.hexdigest()[:16]

    def raw(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (B, F, T, C) float16 and images (B, R, R, 3) uint8 at ``positions``."""
        return self.take("tokens", positions), self.take("images", positions)

    def get(
        self,
        positions: np.ndarray,
        generator: np.random.Generator | None = None,
        flips: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """A batch with one flip per sample: ``flips`` (B,) when given (drawn per sample by
        ``pack.task``), else drawn from ``generator`` (flip 0 when None)."""
        if flips is None:
            flip = draw_flips(generator, len(positions), self.flips)  # (B,)
        else:
            flip = np.asarray(flips, dtype=np.int64)  # (B,)
        tok = self.take_flip("tokens", positions, flip).astype(np.float32)  # (B, T, C)
        img = mirror(self.take("images", positions), flip)  # (B, R, R, 3)
        return {
            "tokens": torch.from_numpy(tok),
            "images": images_to_float(img),  # (B, 3, R, R)
            "flip": torch.from_numpy(flip),
        }

    def token_blocks(
        self, max_samples: int | None = None, block: int = 256
    ) -> Iterator[np.ndarray]:
        """Yield token arrays (b, F, T, C) float16 of up to ``max_samples`` valid samples, spread
        evenly over the entry in chunk-aligned runs, always in the same order (for the PCA)."""
        n = len(self.indices)
        take = np.arange(n)
        if max_samples is not None and max_samples < n:
            chunk = max(1, self.entry.chunk)
            starts = np.arange(0, n, chunk)
            keep = max(1, -(-max_samples // chunk))
            pick = starts[np.linspace(0, len(starts) - 1, keep).round().astype(int)]
            take = np.unique(np.concatenate([np.arange(s, min(s + chunk, n)) for s in pick]))
            take = take[:max_samples]
        for lo in range(0, len(take), block):
            yield self.take("tokens", take[lo : lo + block])


def check_square_grid(tokens: int) -> int:
    """Side of a square token grid, or ConfigError."""
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ConfigError(
            f"{tokens} tokens do not form a square grid",
            "the packing autoencoder needs encoders with square token grids",
        )
    return side
