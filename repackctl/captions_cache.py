"""`repackctl captions`: every caption of every image of a cache entry → cached text features.

A text-to-image run draws one of an image's captions at random at each step (REPA
``train_t2i.py``); the frozen text encoder never runs inside the training loop. So each caption is
encoded once, here, into the group ``text/<text-id>/`` of the entry (DESIGN.md §4):

    tokens  float16 (N, K, L, C)   per-token features, K = most captions of one image
    mask    bool    (N, K, L)      True = real token (padding and missing captions False)
    pooled  float16 (N, K, C)      pooled vector per caption
    count   uint8   (N,)           number of captions of the image (rows k < count are real)
    captions str    (N,)           the image's captions, one per line (the text that was encoded)
    done    uint8   (N,)           0 pending, 1 written, ≥ 2 skipped (``SKIP_REASONS``)
    null_tokens, null_mask, null_pooled: the features of the empty caption "" (the null caption
    of classifier-free guidance), written with the group

The group is created atomically (``DatasetEntry.create_or_open_group``), its attributes record the
encoder's ``describe()`` (id, weights sha256, length, pooling) and the caption source. Work is
split like ``extract``: each process owns whole shards (``owned_ranges``), a shard is encoded,
written, and only then marked done under its shard lock, so a killed run redoes at most one shard
and a rerun skips done rows. Images the entry skipped, and images without any usable caption, are
skipped (code ``NO_CAPTION``) and listed; empty captions are dropped from their image and listed.

Shapes: N images, K captions per image, L tokens, C text width.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from repackctl.cache.creation import ShardLocks, crash_point, test_delay
from repackctl.cache.store import (
    PENDING,
    SKIP_REASONS,
    TEXT_ARRAYS,
    TEXT_NULL_ARRAYS,
    WRITTEN,
    ArrayGroup,
    DatasetEntry,
    checksummed,
    list_entries,
    owned_ranges,
)
from repackctl.encoders.text import TextEncoder
from repackctl.errors import CacheError, ConfigError, DataError
from repackctl.progress import ProgressFactory, null_progress
from repackctl.registry import registry
from repackctl.runtime import DistInfo, resolve_device

TEXT_KIND = "text"
NO_CAPTION = 6  # done code of an image without a usable caption (SKIP_REASONS[6])


@dataclass
class CaptionsResult:
    """What a captions run did, for the CLI to render."""

    entry: str
    text_id: str
    n: int
    captions: int
    written: int
    already_done: int
    max_captions: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    healed: list[str] = field(default_factory=list)  # null-caption arrays rewritten (damaged)


# --------------------------------------------------------------------------- the text encoder


def make_text_encoder(
    ref: str, weights: str | None = None, max_length: int | None = None
) -> TextEncoder:
    """A registered text encoder: ``minilm``, ``clip:PATH`` (or ``clip`` with ``weights``)."""
    name, arg = registry("text_encoders").split_id(ref)
    factory = registry("text_encoders").get(name)
    return factory(weights=arg or weights, max_length=max_length)


def text_id(encoder: TextEncoder) -> str:
    """The group name of an encoder's features: ``<id>--len<L>--<sha8>`` (safe in paths)."""
    return f"{encoder.id}--len{encoder.max_length}--{encoder.weights_sha256[:8]}"


# --------------------------------------------------------------------------- captions of an entry


def newest_entry(root: str, folders: bool = False) -> str:
    """The newest built-in entry holding packed latents (what `train t2i` uses), else the
    newest built-in entry; with ``folders``, the same among image-folder entries (for a caption
    index or COCO given by ``--captions``)."""
    names = list_entries(root)
    found = []
    for name in names:
        ds = DatasetEntry.open(root, name)
        source = ds.attrs.get("source") or {}
        if (not source.get("root")) if folders else source.get("dataset") != "builtin":
            continue
        path = Path(str(getattr(ds.group.store, "root", ""))) / ds.group.path / "zarr.json"
        mtime = path.stat().st_mtime if path.exists() else 0.0
        found.append((bool(ds.latent_ids()), mtime, name))
    if not found:
        kind, data = ("image-folder", " --data imagefolder:PATH") if folders else ("built-in", "")
        raise CacheError(
            f"no {kind} cache entry in {root} (have: {', '.join(names) or 'none'})",
            f"run `repackctl extract{data}` first, or pass --entry NAME",
        )
    return max(found)[2]


_BUILTIN_KEY = re.compile(r"^builtin:(\d+):([^:]+):(\d+)$")


def _builtin_captions(ds: DatasetEntry) -> Callable[[int, str], list[str]]:
    from repackctl.data.captions import builtin_captions

    def captions(i: int, key: str) -> list[str]:
        m = _BUILTIN_KEY.match(key)
        if m is None:
            return []
        seed, split, index = int(m.group(1)), m.group(2), int(m.group(3))
        return builtin_captions(index, split=split, seed=seed)

    return captions


def _file_captions(ds: DatasetEntry, where: str | None, skipped: list) -> Callable:
    """Captions of a folder entry from an index file (or ``coco:ROOT``), matched by file path."""
    from repackctl.data.captions import CocoCaptions, FolderCaptions

    source = ds.attrs.get("source") or {}
    root = source.get("root")
    if where and where.startswith("coco:"):
        split = "val" if str(ds.attrs.get("split")) == "val" else "train"
        found = CocoCaptions(where[5:], split=split)
        base = Path(where[5:]).expanduser() / f"{split}2017"
    elif root:
        found = FolderCaptions(root, index=where)
        base = Path(root)
    else:
        raise ConfigError(
            f"cache entry {ds.name} has no built-in or folder source to take captions from",
            "pass --captions FILE.jsonl (file + caption rows) or --captions coco:ROOT",
        )
    skipped += [(row, reason) for row, reason in found.skipped]
    by_path: dict[str, list[str]] = {}
    for path, caps in found:
        rel = Path(path).resolve()
        for b in (base.resolve(), base.resolve() / str(ds.attrs.get("split"))):
            if rel.is_relative_to(b):
                by_path[rel.relative_to(b).as_posix()] = caps
    return lambda i, key: by_path.get(key, [])


def caption_lookup(ds: DatasetEntry, where: str | None, skipped: list) -> Callable:
    """``captions(i, key) -> list[str]`` for the entry's images (built-in or from files)."""
    if (ds.attrs.get("source") or {}).get("dataset") == "builtin" and not where:
        return _builtin_captions(ds)
    return _file_captions(ds, where, skipped)


def _clean(captions: list[str], key: str, skipped: list) -> list[str]:
    out = []
    for k, c in enumerate(captions):
        c = " ".join(str(c).split())
        if c:
            out.append(c)
        else:
            skipped.append((f"{key} caption {k}", "empty caption"))
    return out


# --------------------------------------------------------------------------- the group


def _build(encoder: TextEncoder, ds: DatasetEntry, k: int) -> Callable[[zarr.Group], None]:
    """The arrays of a new text group, including the null caption's features."""
    length, c = encoder.max_length, encoder.dim

    def build(sub: zarr.Group) -> None:
        ds.add_sample_array(sub, "tokens", (k, length, c), "float16")
        ds.add_sample_array(sub, "mask", (k, length), "bool")
        ds.add_sample_array(sub, "pooled", (k, c), "float16")
        ds.add_sample_array(sub, "count", (), "uint8")
        sub.create_array(
            "captions", shape=(ds.n,), chunks=(ds.shard,), dtype=str, compressors=checksummed()
        )
        crash_point("captions")
        for name, value in _null_features(encoder).items():  # null_tokens last: required
            arr = sub.create_array(
                name, shape=value.shape, dtype=value.dtype, compressors=checksummed()
            )
            arr[...] = value
            crash_point(name)

    return build


def _null_features(encoder: TextEncoder) -> dict[str, np.ndarray]:
    """The empty caption's ``null_mask`` (L,), ``null_pooled`` (C,), ``null_tokens`` (L, C)."""
    with torch.no_grad():
        null = encoder.encode([""])
    return {
        "null_mask": null.mask[0].cpu().numpy().astype(bool),
        "null_pooled": null.pooled[0].float().cpu().numpy().astype(np.float16),
        "null_tokens": null.tokens[0].float().cpu().numpy().astype(np.float16),
    }


def heal_null_caption(grp: ArrayGroup, encoder: TextEncoder) -> list[str]:
    """Rewrite the null-caption arrays of an existing group if a chunk is missing or corrupt
    (e.g. removed by `cache verify --repair`); returns the names rewritten."""
    from repackctl.cache.integrity import scan_array

    values: dict[str, np.ndarray] | None = None
    healed = []
    for name in TEXT_NULL_ARRAYS:
        arr = grp[name]
        if scan_array(arr, np.ones(arr.shape[0], bool), name):
            values = values or _null_features(encoder)
            arr[...] = values[name]
            healed.append(name)
    return healed


def open_text_group(ds: DatasetEntry, text: str) -> ArrayGroup:
    """A complete text group of the entry, or an error naming the command to run."""
    have = ds.complete_groups(TEXT_KIND, TEXT_ARRAYS)
    if text not in have:
        raise CacheError(
            f"no caption features {text!r} in {ds.name} (have: {', '.join(have) or 'none'})",
            f"run `repackctl captions --entry {ds.name}` with the same text encoder",
        )
    return ArrayGroup(ds.group[TEXT_KIND][text])


def find_text_group(ds: DatasetEntry, encoder_ref: str) -> str:
    """The newest complete text group of ``encoder_ref`` (``minilm`` → ``minilm-l6--…``)."""
    have = ds.complete_groups(TEXT_KIND, TEXT_ARRAYS)
    name = encoder_ref.split(":")[0]
    hits = [
        t
        for t in have
        if t == encoder_ref
        or (ArrayGroup(ds.group[TEXT_KIND][t]).attrs.get("encoder_ref") or "").split(":")[0] == name
    ]
    if not hits:
        raise CacheError(
            f"no caption features of text encoder {encoder_ref!r} in {ds.name} "
            f"(have: {', '.join(have) or 'none'})",
            f"run `repackctl captions --entry {ds.name} --text-encoder {encoder_ref}` first",
        )
    return sorted(hits)[-1]


# --------------------------------------------------------------------------- the command


def _encode_shard(
    encoder: TextEncoder, rows: list[list[str]], k: int, batch: int
) -> dict[str, np.ndarray]:
    """Features of every caption of ``rows`` (one list per image), zero-padded to K captions."""
    m, length, c = len(rows), encoder.max_length, encoder.dim
    out = {
        "tokens": np.zeros((m, k, length, c), np.float16),
        "mask": np.zeros((m, k, length), bool),
        "pooled": np.zeros((m, k, c), np.float16),
    }
    flat = [(i, j, cap) for i, caps in enumerate(rows) for j, cap in enumerate(caps[:k])]
    for s in range(0, len(flat), batch):
        part = flat[s : s + batch]
        f = encoder.encode([cap for _, _, cap in part])
        ii = np.array([p[0] for p in part])
        jj = np.array([p[1] for p in part])
        out["tokens"][ii, jj] = f.tokens.float().cpu().numpy()
        out["mask"][ii, jj] = f.mask.cpu().numpy()
        out["pooled"][ii, jj] = f.pooled.float().cpu().numpy()
    return out


def _all_captions(
    ds: DatasetEntry, where: str | None, keys: list[str], img_done: np.ndarray, skipped: list
) -> list[list[str]]:
    """The cleaned captions of every image (none for images the entry skipped)."""
    lookup = caption_lookup(ds, where, skipped)
    out = [
        _clean(lookup(i, keys[i]), keys[i], skipped) if img_done[i] == WRITTEN else []
        for i in range(ds.n)
    ]
    if not any(out):
        raise DataError(
            f"no image of {ds.name} has a caption",
            "pass --captions with an index of file + caption rows for this entry's images",
        )
    return out


def _write_shard(
    grp: ArrayGroup,
    r: range,
    rows: list[list[str]],
    img_done: np.ndarray,
    encoder: TextEncoder,
    k: int,
    cfg: Any,
) -> np.ndarray:
    """Encode and write one shard's captions, then mark it done; returns its done codes."""
    with torch.no_grad():
        feats = _encode_shard(encoder, rows, k, cfg.batch_size)
    counts = np.array([min(len(c), k) for c in rows], np.uint8)
    codes = np.where(counts > 0, WRITTEN, NO_CAPTION).astype(np.uint8)
    image_codes = img_done[r.start : r.stop]
    codes = np.where(image_codes == WRITTEN, codes, image_codes)  # skipped images stay skipped
    sl = slice(r.start, r.stop)
    for key, value in feats.items():
        grp[key][sl] = value
    grp["count"][sl] = counts
    grp["captions"][sl] = np.array(["\n".join(c[:k]) for c in rows], dtype=str)
    grp.done[sl] = codes  # last: the shard counts as done only now
    return codes


def run_captions(
    settings: Any, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
) -> CaptionsResult:
    """Encode (or finish encoding) the captions of one cache entry."""
    cfg = settings.captions
    dist = dist or DistInfo.from_env()
    name = cfg.entry or newest_entry(settings.cache, folders=bool(cfg.captions))
    ds = DatasetEntry.open(settings.cache, name)
    skipped: list[tuple[str, str]] = []
    keys = [str(k) for k in ds.keys[:]]
    img_done = ds.done[:]
    all_caps = _all_captions(ds, cfg.captions, keys, img_done, skipped)
    k = max(len(c) for c in all_caps)
    encoder = make_text_encoder(cfg.text_encoder, cfg.text_weights, cfg.max_length)
    device = resolve_device(settings.device, dist.local_rank)
    encoder = encoder.to(device) if hasattr(encoder, "to") else encoder
    tid = text_id(encoder)
    attrs = {
        "encoder": encoder.describe(),
        "encoder_ref": cfg.text_encoder,
        "text_weights": cfg.text_weights,
        "max_captions": k,
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "captions": cfg.captions or "builtin",
    }
    make = lambda: ds.create_or_open_group(  # noqa: E731
        TEXT_KIND, tid, attrs, build=_build(encoder, ds, k), required=TEXT_ARRAYS
    )
    healed: list[str] = []
    if dist.rank == 0:
        grp, created = make()
        healed = [] if created else heal_null_caption(grp, encoder)
    dist.barrier()
    if dist.rank != 0:
        grp, _ = make()
    ranges = owned_ranges(ds.n, ds.shard, dist.rank, dist.world)
    done = grp.done[:]
    pending = [r for r in ranges if (done[r.start : r.stop] == PENDING).any()]
    already = sum(len(r) for r in ranges) - sum(len(r) for r in pending)
    written, t0 = 0, time.perf_counter()
    locks = ShardLocks(settings.cache, grp.done)
    todo = sum(len(r) for r in pending)
    with progress(f"captions {encoder.id}", total=todo, unit="img") as bar:
        if already:
            bar.log(f"resuming: {already} images of this process were already done")
        try:
            for r in pending:
                locks.acquire(r.start // ds.shard)
                if not (np.asarray(grp.done[r.start : r.stop]) == PENDING).any():
                    locks.release(r.start // ds.shard)  # another process did it meanwhile
                    continue
                test_delay()
                codes = _write_shard(grp, r, all_caps[r.start : r.stop], img_done, encoder, k, cfg)
                locks.release(r.start // ds.shard)
                written += int((codes == WRITTEN).sum())
                bar.advance(len(r))
        finally:
            locks.release_all()
    dist.barrier()
    final = grp.done[:]
    skipped += [
        (keys[i], SKIP_REASONS.get(int(final[i]), "skipped"))
        for i in np.flatnonzero((final != WRITTEN) & (final != PENDING))
    ]
    return CaptionsResult(
        entry=ds.name,
        text_id=tid,
        n=ds.n,
        captions=sum(len(c) for c in all_caps),
        written=written,
        already_done=already,
        max_captions=k,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        healed=healed,
    )
