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
encoder's ``describe()`` (id, weights sha256, sha256 of its config and tokenizer files, length,
pooling; a rerun refuses a group encoded with other files), the caption source, the sha256 of
every cleaned caption in row order (``captions_sha256``) and how many captions were longer than
``max_length`` tokens and so cut (``truncated_captions``; also a warning line), and the versions
of torch, repackctl and (a Hugging Face encoder) transformers and tokenizers it was encoded with
(``package_versions``: a run that would encode pending rows, or a damaged null caption, under
other versions is refused before it writes, ``cache.versions``; a finished group is read
whatever is installed). A rerun first
checks that every finished row was encoded from the captions the source gives now (an edited
caption file is refused, naming `repackctl cache rm ENTRY --text ID`). Work is
split like ``extract``: each process owns whole shards (``owned_ranges``), a shard is encoded,
written, and only then marked done under its shard lock, so a killed run redoes at most one shard
and a rerun skips done rows. Images the entry skipped, and images without any usable caption, are
skipped (code ``NO_CAPTION``) and listed; empty captions are dropped from their image and listed.
The counts a run returns (and the CLI prints: written now, already done) are summed over the
processes: each knows only its own shards, and rank 0's share is not the job's.

Shapes: N images, K captions per image, L tokens, C text width.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from repackctl.cache.commands import captions_command, remove_command
from repackctl.cache.creation import ShardLocks, entry_writer, test_delay
from repackctl.cache.integrity import GuardedArray, repair_hint
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
from repackctl.cache.versions import check_group_versions, text_packages, versions_now
from repackctl.crash import crash_point
from repackctl.data.captions import CAPTIONS_VERSION
from repackctl.encoders.text import TextEncoder
from repackctl.errors import CacheError, ConfigError, DataError, name_items
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
    truncated: int | None = 0  # captions cut to max_length tokens (None: cannot be counted)
    longest_tokens: int = 0  # tokens of the longest caption


# --------------------------------------------------------------------------- the text encoder


def make_text_encoder(
    ref: str, weights: str | None = None, max_length: int | None = None
) -> TextEncoder:
    """A registered text encoder: ``minilm``, ``clip:PATH`` (or ``clip`` with ``weights``)."""
    name, arg = registry("text_encoders").split_id(ref)
    factory = registry("text_encoders").get(name)
    return factory(weights=arg or weights, max_length=max_length)


def text_id(encoder: TextEncoder, generated: int | None = None) -> str:
    """The group name of an encoder's features: ``<id>--len<L>--<sha8>`` (safe in paths), plus
    ``--captions-v<N>`` for built-in captions of generator version N ≥ 2 (``generated``; version
    1 keeps the name it had before versions were recorded, so those groups are still found)."""
    base = f"{encoder.id}--len{encoder.max_length}--{encoder.weights_sha256[:8]}"
    return base if generated is None or generated <= 1 else f"{base}--captions-v{generated}"


# --------------------------------------------------------------------------- captions of an entry


def default_entries(root: str, folders: bool = False) -> list[str]:
    """The entries `repackctl captions` encodes when no ``--entry`` is given.

    First the training entry: the one train-split built-in entry (with ``folders``: image-folder
    entry, for a caption index or COCO given by ``--captions``); among several, the one holding
    packed latents (what `train t2i` trains on). Several left: refused, the user names one. Then,
    for built-in data, the val-split entries of the same data and resolution (``paired_val_entries``,
    as `sample` pairs them: it takes its default prompts from their captions).
    """
    names = list_entries(root)
    train: list[tuple[bool, str]] = []  # (holds packed latents, name)
    for name in names:
        ds = DatasetEntry.open(root, name)
        source = ds.attrs.get("source") or {}
        builtin = source.get("dataset") == "builtin"
        if (not source.get("root")) if folders else not builtin:
            continue
        if str(ds.attrs.get("split")) == "train":
            train.append((bool(ds.latent_ids()), name))
    if not train:
        kind, data = ("image-folder", " --data imagefolder:PATH") if folders else ("built-in", "")
        raise CacheError(
            f"no train-split {kind} cache entry in {root} (have: {', '.join(names) or 'none'})",
            f"run `repackctl extract{data}` first, or pass --entry NAME",
        )
    packed = [t for t in train if t[0]] or train
    if len(packed) > 1:
        listed = ", ".join(t[1] for t in packed)
        raise ConfigError(
            f"several train-split entries could be captioned ({listed}); which one a run "
            "trains on would be a guess",
            f"choose one with --entry (e.g. --entry {packed[0][1]})",
        )
    name = packed[0][1]
    if folders:
        return [name]
    # the val entries `sample` pairs with it (same data and resolution, by what they record)
    return [name, *paired_val_entries(root, DatasetEntry.open(root, name))]


# source attributes that differ between the splits (and subsets) of one data source
_PER_SPLIT = (
    "split",
    "num",
    "total",
    "subset_seed",
    "class_ids_from",
    "skipped_in_listing",
    "duplicate_links_dropped",
)


def data_identity(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """What an entry records about its data apart from split and size: its source attributes
    (built-in seed and generator version, image-folder root and layout…) without the per-split
    ones; None when it records no source."""
    source = attrs.get("source") or {}
    return {k: v for k, v in source.items() if k not in _PER_SPLIT} or None


def paired_val_entries(root: str, train: DatasetEntry) -> list[str]:
    """The val-split entries of ``root`` holding the same data as ``train`` at its resolution,
    paired by what the entries record (source attributes, resolution), never by name: two
    datasets whose names share a prefix are not paired."""
    want = data_identity(train.attrs)
    if want is None:
        return []
    out = []
    for name in list_entries(root):
        attrs = DatasetEntry.open(root, name).attrs
        if (
            attrs.get("split") == "val"
            and attrs.get("resolution") == train.attrs.get("resolution")
            and data_identity(attrs) == want
        ):
            out.append(name)
    return sorted(out)


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


def _file_captions(ds: DatasetEntry, where: str | None, skipped: list) -> tuple[Callable, str]:
    """Captions of a folder entry from an index file (or ``coco:ROOT``), matched by file path,
    and the source they were read from, spelled one way (``caption_source_lookup``)."""
    from repackctl.data.captions import CocoCaptions, FolderCaptions

    source = ds.attrs.get("source") or {}
    root = source.get("root")
    if source.get("dataset") == "builtin":
        raise ConfigError(
            f"--captions {where} is for image-folder entries, and {ds.name} holds built-in "
            "images: their captions are generated from the images themselves, with no file",
            f"drop --captions: `repackctl captions --entry {ds.name}`; to caption your own "
            "images, extract them first (`repackctl extract --data imagefolder:PATH`) and pass "
            "that entry with --captions",
        )
    if where and where.startswith("coco:"):
        split = "val" if str(ds.attrs.get("split")) == "val" else "train"
        found = CocoCaptions(where[5:], split=split)
        base = Path(where[5:]).expanduser() / f"{split}2017"
        read_from = f"coco:{found.root.resolve()}"
    elif root:
        found = FolderCaptions(root, index=where)
        base = Path(root)
        read_from = str(found.index.resolve())
    else:
        raise ConfigError(
            f"cache entry {ds.name} records no image folder (data "
            f"{source.get('dataset') or 'unknown'}): caption files are matched to the images "
            "of an image-folder entry by their paths",
            "extract the images from a folder (`repackctl extract --data imagefolder:PATH`), "
            "then pass that entry with --captions FILE.jsonl or --captions coco:ROOT",
        )
    skipped += [(row, reason) for row, reason in found.skipped]
    by_path: dict[str, list[str]] = {}
    for path, caps in found:
        rel = Path(path).resolve()
        for b in (base.resolve(), base.resolve() / str(ds.attrs.get("split"))):
            if rel.is_relative_to(b):
                by_path[rel.relative_to(b).as_posix()] = caps
    return (lambda i, key: by_path.get(key, [])), read_from


def generated_captions(ds: DatasetEntry, where: str | None) -> bool:
    """Whether the entry's captions come from the built-in caption generator (not a file)."""
    return (ds.attrs.get("source") or {}).get("dataset") == "builtin" and not where


def caption_source_lookup(
    ds: DatasetEntry, where: str | None, skipped: list
) -> tuple[Callable, str]:
    """(``captions(i, key) -> list[str]`` for the entry's images, the source they come from:
    ``builtin``, the resolved path of the index file (the folder's own ``captions.jsonl`` when
    ``where`` is None) or ``coco:<resolved root>``). The source is recorded with the features,
    one spelling per file: ``captions.jsonl``, ``./captions.jsonl`` and its absolute path, or the
    default index, name the same captions (what was encoded is compared by ``check_source``)."""
    if generated_captions(ds, where):
        return _builtin_captions(ds), "builtin"
    return _file_captions(ds, where, skipped)


def caption_lookup(ds: DatasetEntry, where: str | None, skipped: list) -> Callable:
    """``captions(i, key) -> list[str]`` for the entry's images (built-in or from files)."""
    return caption_source_lookup(ds, where, skipped)[0]


def _clean(captions: list[str], key: str, skipped: list) -> list[str]:
    out = []
    for k, c in enumerate(captions):
        c = " ".join(str(c).split())
        if c:
            out.append(c)
        else:
            skipped.append((f"{key} caption {k}", "empty caption"))
    return out


# --------------------------------------------------------------------------- source checks


def captions_sha256(rows: list[list[str]]) -> str:
    """sha256 of every image's cleaned captions in row order (one JSON list per row)."""
    h = hashlib.sha256()
    for caps in rows:
        h.update(json.dumps(caps, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


@dataclass
class Truncation:
    """Captions longer than the text encoder's ``max_length`` tokens (cut when encoded)."""

    count: int | None  # None: the encoder has no tokenizer to count them with
    total: int
    longest: int = 0  # tokens of the longest caption
    examples: list[tuple[str, int]] = field(default_factory=list)  # (caption, tokens)


def count_truncated(
    encoder: TextEncoder, rows: list[list[str]], show: int = 3, batch: int = 8192
) -> Truncation:
    """How many captions of ``rows`` the encoder cuts to its ``max_length`` tokens."""
    flat = [c for caps in rows for c in caps]
    tokenizer = getattr(encoder, "tokenizer", None)
    if not callable(tokenizer):
        return Truncation(None, len(flat))
    lengths = np.zeros(len(flat), np.int64)
    for s in range(0, len(flat), batch):  # batches: a COCO-sized list of token ids is large
        try:
            ids = tokenizer(flat[s : s + batch], truncation=False, padding=False, verbose=False)
        except (TypeError, KeyError):  # not a Hugging Face tokenizer: cannot count
            return Truncation(None, len(flat))
        lengths[s : s + batch] = [len(i) for i in ids["input_ids"]]
    cut = np.flatnonzero(lengths > encoder.max_length)
    examples = [(flat[i], int(lengths[i])) for i in cut[:show]]
    return Truncation(len(cut), len(flat), int(lengths.max(initial=0)), examples)


def truncation_warning(t: Truncation, encoder_id: str, length: int) -> str | None:
    """The ``warning:`` line about cut captions, or None when none was cut."""
    if t.count is None:
        return (
            f"Warning: text encoder {encoder_id} has no tokenizer, so the captions longer than "
            f"{length} tokens (cut when encoded) cannot be counted"
        )
    if not t.count:
        return None
    eg = "; ".join(f"{c!r} ({n} tokens)" for c, n in t.examples)
    return (
        f"Warning: {t.count} of {t.total} captions are longer than {length} tokens and were cut "
        f"to {length} when encoded (the longest has {t.longest}), e.g. {eg}; pass "
        f"--max-length {t.longest} to keep them whole"
    )


def check_source(
    grp: ArrayGroup, ds: DatasetEntry, tid: str, rows: list[list[str]], keys: list[str]
) -> None:
    """Refuse features encoded from other captions than ``rows`` (the source as it is now).

    Every finished row's stored caption text is compared with the fresh one, so an edited
    caption file is found in groups written before ``captions_sha256`` was recorded too; a change
    in rows still pending is no conflict: they are encoded from the source as it is now.
    """
    done = np.asarray(grp.done[:])  # before the texts: a row is marked done after its text
    finished = np.flatnonzero(done != PENDING)
    if not len(finished):
        return
    stored = np.asarray(grp["captions"][:])
    changed = [int(i) for i in finished if str(stored[i]) != "\n".join(rows[i])]
    if not changed:
        return
    i = changed[0]
    old, new = str(stored[i]).split("\n"), rows[i]
    j = next((j for j, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), len(new))
    was, now = (old[j] if j < len(old) else None), (new[j] if j < len(new) else None)
    raise CacheError(
        f"the captions of {len(changed)} images of {ds.name} are not those text/{tid} was "
        f"encoded from (e.g. {keys[i]} caption {j}: was {was!r}, now {now!r})",
        f"remove the old features with `{remove_command(ds.name, TEXT_KIND, tid)}`, then run "
        "`repackctl captions` again",
    )


def generator_version(ds: DatasetEntry, attrs: dict[str, Any]) -> int | None:
    """The built-in caption generator version a text group of ``ds`` (its ``attrs``) was
    encoded from: recorded, else 1 (groups from before it was recorded); None for captions
    from a file."""
    if not generated_captions(ds, None) or attrs.get("captions") != "builtin":
        return None
    return int(attrs.get("builtin_captions_version", 1))


def check_generator(grp: ArrayGroup, ds: DatasetEntry, tid: str) -> None:
    """Refuse a group of built-in captions made by another caption generator version than
    this repackctl's (``CAPTIONS_VERSION``): its captions are not this version's."""
    made = generator_version(ds, grp.attrs)
    if made is None or made == CAPTIONS_VERSION:
        return
    raise CacheError(
        f"text/{tid} of {ds.name} holds built-in captions of caption generator version {made}, "
        f"but this repackctl's is version {CAPTIONS_VERSION}: its captions are not this "
        "version's",
        "encode them again into a new group: remove it with "
        f"`{remove_command(ds.name, TEXT_KIND, tid)}`, then run "
        f"`repackctl captions --entry {ds.name}`",
    )


# --------------------------------------------------------------------------- the group


def _build(
    encoder: TextEncoder, ds: DatasetEntry, k: int, source: dict[str, Any]
) -> Callable[[zarr.Group], None]:
    """The arrays of a new text group, including the null caption's features; ``source``
    (captions sha256, truncated count, where the captions were read) is recorded in its
    attributes but not compared on open: ``check_source`` compares the captions themselves."""
    length, c = encoder.max_length, encoder.dim

    def build(sub: zarr.Group) -> None:
        sub.attrs.update(source)
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


def heal_null_caption(
    grp: ArrayGroup, encoder: TextEncoder, versions: dict[str, str] | None = None
) -> list[str]:
    """Rewrite the null-caption arrays of an existing group if a chunk is missing or corrupt
    (e.g. removed by `cache verify --repair`); returns the names rewritten. Rewritten features
    are written ones: under other package ``versions`` than the group records they are
    refused like pending rows (``cache.versions.check_group_versions``), before anything is
    written."""
    from repackctl.cache.integrity import scan_array

    damaged = [
        name
        for name in TEXT_NULL_ARRAYS
        if scan_array(grp[name], np.ones(grp[name].shape[0], bool), name)
    ]
    if damaged and versions is not None:
        entry = grp.group.path.partition("/")[0]
        check_group_versions(
            grp.attrs, versions, entry, TEXT_KIND, grp.group.basename, lambda: True
        )
    values = _null_features(encoder) if damaged else {}
    for name in damaged:
        grp[name][...] = values[name]
    return damaged


def open_text_group(ds: DatasetEntry, text: str) -> ArrayGroup:
    """A complete text group of the entry, or an error naming the command to run."""
    have = ds.complete_groups(TEXT_KIND, TEXT_ARRAYS)
    if text not in have:
        raise CacheError(
            f"no caption features {text!r} in {ds.name} (have: {', '.join(have) or 'none'})",
            missing_group_hint(ds, text, have),
        )
    return ArrayGroup(ds.group[TEXT_KIND][text])


#: a text group's name (``text_id``): encoder id, max_length, weights sha256[:8], and the
#: built-in captions' generator version from 2 on
_TEXT_ID = re.compile(r"(?P<id>.+?)--len(?P<len>\d+)--(?P<sha>[0-9a-f]{8})(?:--captions-v\d+)?")


def missing_group_hint(ds: DatasetEntry, text: str, have: list[str]) -> str:
    """The `repackctl captions` command that makes the group ``text`` of entry ``ds``: its text
    encoder and ``--max-length`` read off the name (without it the encoder's default length
    makes a group of another name); the encoder reference, weights folder and caption source
    from a group of ``ds`` made by the same encoder, when one is there."""
    m = _TEXT_ID.fullmatch(text)
    if m is None:  # not a name `captions` gives: which command makes it is not known
        return f"run `repackctl captions --entry {ds.name}` with the text encoder that made it"
    attrs: dict[str, Any] = {}
    for name in have:  # the same encoder's reference and weights; the entry's caption source
        group_attrs = dict(ds.group[TEXT_KIND][name].attrs)
        same = (group_attrs.get("encoder") or {}).get("id") == m["id"]
        if same or not attrs:
            attrs = {k: group_attrs.get(k) for k in ("captions", "encoder_ref", "text_weights")}
            attrs["encoder_ref"] = attrs["encoder_ref"] if same else None
        if same:
            break
    if not attrs.get("encoder_ref"):  # `minilm` makes `minilm-l6`, `clip` makes `clip-text`
        names = [n for n in registry("text_encoders").ids() if m["id"].startswith(n)]
        attrs["encoder_ref"] = max(names, key=len) if names else m["id"]
    attrs["max_length"] = int(m["len"])
    return (
        f"run {captions_command(ds.name, attrs)} (text encoder {m['id']} with weights of "
        f"sha256 {m['sha']}…, {m['len']} tokens per caption)"
    )


def find_text_group(ds: DatasetEntry, encoder_ref: str) -> str:
    """The complete text group named ``encoder_ref``, else the one group of that text encoder
    (``minilm`` → ``minilm-l6--len77--…``); several are refused (picking one would be a guess:
    they differ in caption length or weights). Groups of built-in captions made by another
    caption generator version are never picked this way (only named)."""
    have = ds.complete_groups(TEXT_KIND, TEXT_ARRAYS)
    if encoder_ref in have:
        return encoder_ref
    name = encoder_ref.split(":")[0]
    attrs = {t: ArrayGroup(ds.group[TEXT_KIND][t]).attrs for t in have}
    hits = [t for t in have if (attrs[t].get("encoder_ref") or "").split(":")[0] == name]
    other = [t for t in hits if generator_version(ds, attrs[t]) not in (None, CAPTIONS_VERSION)]
    hits = [t for t in hits if t not in other]
    if other and not hits:
        raise CacheError(
            f"the caption features of text encoder {encoder_ref!r} in {ds.name} "
            f"({', '.join(sorted(other))}) hold built-in captions of another caption generator "
            f"version than this repackctl's (version {CAPTIONS_VERSION})",
            f"run `repackctl captions --entry {ds.name} --text-encoder {encoder_ref}` to encode "
            f"this version's captions, or pass --text-features {sorted(other)[-1]} to use those",
        )
    if not hits and _TEXT_ID.fullmatch(encoder_ref):  # a group's name: the command making it
        raise CacheError(
            f"no caption features {encoder_ref!r} in {ds.name} (have: {', '.join(have) or 'none'})",
            missing_group_hint(ds, encoder_ref, have),
        )
    if not hits and name not in registry("text_encoders").ids():
        # a typo: the `captions` command the hint below names would fail on it the same way
        registry("text_encoders").get(name)  # raises: the closest ids, or a disabled plugin
    if not hits:
        raise CacheError(
            f"no caption features of text encoder {encoder_ref!r} in {ds.name} "
            f"(have: {', '.join(have) or 'none'})",
            f"run `repackctl captions --entry {ds.name} --text-encoder {encoder_ref}` first",
        )
    if len(hits) > 1:
        raise ConfigError(
            f"{len(hits)} caption-feature groups of text encoder {encoder_ref!r} in {ds.name}: "
            f"{', '.join(sorted(hits))}",
            f"choose one with --text-features ID (e.g. --text-features {sorted(hits)[-1]})",
        )
    return hits[0]


# --------------------------------------------------------------------------- the command


def _encode_shard(
    encoder: TextEncoder,
    rows: list[list[str]],
    k: int,
    batch: int,
    on_images: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Features of every caption of ``rows`` (one list per image), zero-padded to K captions.
    ``on_images(n)``: ``n`` more images encoded (after each batch: a shard of 1024 images took
    minutes without a progress line)."""
    m, length, c = len(rows), encoder.max_length, encoder.dim
    out = {
        "tokens": np.zeros((m, k, length, c), np.float16),
        "mask": np.zeros((m, k, length), bool),
        "pooled": np.zeros((m, k, c), np.float16),
    }
    flat = [(i, j, cap) for i, caps in enumerate(rows) for j, cap in enumerate(caps[:k])]
    reported = 0
    for s in range(0, len(flat), batch):
        part = flat[s : s + batch]
        f = encoder.encode([cap for _, _, cap in part])
        ii = np.array([p[0] for p in part])
        jj = np.array([p[1] for p in part])
        out["tokens"][ii, jj] = f.tokens.float().cpu().numpy()
        out["mask"][ii, jj] = f.mask.cpu().numpy()
        out["pooled"][ii, jj] = f.pooled.float().cpu().numpy()
        # the images before the batch's last one have all their captions encoded
        finished = part[-1][0] if s + batch < len(flat) else m
        if on_images is not None and finished > reported:
            on_images(finished - reported)
            reported = finished
    if on_images is not None and m > reported:  # images without captions
        on_images(m - reported)
    return out


def _all_captions(
    ds: DatasetEntry, where: str | None, keys: list[str], img_done: np.ndarray, skipped: list
) -> tuple[list[list[str]], str]:
    """(the cleaned captions of every image (none for images the entry skipped), their source
    as ``caption_source_lookup`` spells it)."""
    lookup, read_from = caption_source_lookup(ds, where, skipped)
    out = [
        _clean(lookup(i, keys[i]), keys[i], skipped) if img_done[i] == WRITTEN else []
        for i in range(ds.n)
    ]
    if not any(out):
        raise DataError(
            f"no image of {ds.name} has a caption",
            "pass --captions with an index of file + caption rows for this entry's images",
        )
    return out, read_from


def _write_shard(
    grp: ArrayGroup,
    r: range,
    rows: list[list[str]],
    img_done: np.ndarray,
    encoder: TextEncoder,
    k: int,
    cfg: Any,
    on_images: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Encode and write one shard's captions, then mark it done; returns its done codes."""
    with torch.no_grad():
        feats = _encode_shard(encoder, rows, k, cfg.batch_size, on_images)
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


def check_one_weights_folder(ref: str, weights: str | None) -> None:
    """Refuse ``--text-encoder NAME:PATH`` beside a ``--text-weights`` naming another folder:
    the encoder loads ``PATH`` (``make_text_encoder``), so the flag would do nothing while the
    text group recorded it as the folder its features came from (`sample` then looked for it)."""
    name, arg = registry("text_encoders").split_id(ref)
    if not arg or not weights:
        return
    if Path(arg).expanduser().resolve() == Path(weights).expanduser().resolve():
        return
    raise ConfigError(
        f"--text-encoder {ref!r} names the weights folder {arg} and --text-weights another, "
        f"{weights}: the captions would be encoded with {arg} and {weights} ignored (yet "
        "recorded as their weights)",
        f"name the folder once: --text-encoder {name} --text-weights {arg}, or drop --text-weights",
    )


def load_text_encoder(settings: Any, dist: DistInfo) -> TextEncoder:
    """The text encoder of the ``captions`` settings, on this process's device."""
    cfg = settings.captions
    check_one_weights_folder(cfg.text_encoder, cfg.text_weights)
    encoder = make_text_encoder(cfg.text_encoder, cfg.text_weights, cfg.max_length)
    device = resolve_device(settings.device, dist.local_rank)
    return encoder.to(device) if hasattr(encoder, "to") else encoder


def caption_entries(settings: Any) -> list[str]:
    """The entries a `repackctl captions` run encodes: ``--entry``, else ``default_entries``."""
    cfg = settings.captions
    if cfg.entry:
        return [cfg.entry]
    return default_entries(settings.cache, folders=bool(cfg.captions))


def encoder_attrs(ds: DatasetEntry, tid: str, encoder: TextEncoder) -> dict[str, Any]:
    """The encoder's ``describe()`` as the group ``tid`` records it, after refusing an existing
    group encoded with other text-encoder files (weights, config, tokenizer: the same id covers
    only the weights' first 8 hex digits, not the tokenizer). A group written before the
    files were recorded (no ``files_sha256``) is compared, and kept, without them."""
    from repackctl.encoders.text import identity_differences

    now = encoder.describe()
    if tid not in ds.complete_groups(TEXT_KIND, TEXT_ARRAYS):
        return now
    stored = dict(ArrayGroup(ds.group[TEXT_KIND][tid]).attrs).get("encoder") or {}
    differ = identity_differences(stored, now)
    if differ:
        raise CacheError(
            f"text/{tid} of {ds.name} was encoded with other text-encoder files than "
            f"{encoder.id} has now: {'; '.join(differ)}; features encoded now would not match it",
            f"restore the files it was encoded with, or encode again into a new group: remove "
            f"it with `{remove_command(ds.name, TEXT_KIND, tid)}`, then rerun "
            "`repackctl captions`",
        )
    if "files_sha256" not in stored:
        now.pop("files_sha256", None)
    return now


def _absolute(path: str | None) -> str | None:
    """An existing local path made absolute (``sample`` and `cache verify` read it from another
    folder later); anything else (None, ``builtin``, a plugin's argument) as given."""
    if not path or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def encoder_source(ref: str, weights: str | None) -> tuple[str, str | None]:
    """(``--text-encoder``, ``--text-weights``) as a text group records them, and `train t2i`
    then `sample` load the encoder from: a weights folder by its absolute path, so a relative
    one (``--text-weights clip`` or ``clip:./clip``) still names it from another folder."""
    name, arg = registry("text_encoders").split_id(ref)
    return (ref if arg is None else f"{name}:{_absolute(arg)}"), _absolute(weights)


def _open_group(
    ds: DatasetEntry,
    encoder: TextEncoder,
    settings: Any,
    rows: list[list[str]],
    keys: list[str],
    truncated: int | None,
    dist: DistInfo,
    read_from: str,
) -> tuple[ArrayGroup, str, list[str]]:
    """Create the entry's text group, or open it after checking it was encoded from ``rows``;
    returns (group, text id, null-caption arrays rewritten). ``read_from``: where the captions
    come from (``caption_source_lookup``), recorded as ``captions`` but not compared: another
    spelling of the same index, or another file with the same captions, is no conflict (the
    captions themselves are compared, ``check_source``). Likewise the text encoder's reference
    and weights folder (``encoder_source``): its files are compared (``encoder_attrs``)."""
    cfg, k = settings.captions, max(len(c) for c in rows)
    generated = CAPTIONS_VERSION if generated_captions(ds, cfg.captions) else None
    tid = text_id(encoder, generated)
    attrs = {
        "encoder": encoder_attrs(ds, tid, encoder),
        "max_captions": k,
        "max_length": encoder.max_length,
        "dim": encoder.dim,
    }
    source = {"captions_sha256": captions_sha256(rows), "truncated_captions": truncated}
    source["captions"] = read_from
    source["encoder_ref"], source["text_weights"] = encoder_source(
        cfg.text_encoder, cfg.text_weights
    )
    if generated is not None:  # recorded (and checked), not compared by create_or_open_group:
        source["builtin_captions_version"] = generated  # older groups have no such attribute
    versions = versions_now(text_packages(encoder))  # recorded; pending rows: compared
    make = lambda: ds.create_or_open_group(  # noqa: E731
        TEXT_KIND, tid, attrs, _build(encoder, ds, k, source), TEXT_ARRAYS, versions
    )
    healed: list[str] = []
    if dist.rank == 0:
        grp, created = make()
        if not created:
            check_generator(grp, ds, tid)
            check_source(grp, ds, tid, rows, keys)
            healed = heal_null_caption(grp, encoder, versions)  # refused before any write
            if any(grp.attrs.get(key) != value for key, value in source.items()):
                grp.group.attrs.update(source)  # older group, or a change in pending rows only
    dist.barrier()
    if dist.rank != 0:
        grp, _ = make()
    return grp, tid, healed


def _encode_pending(
    settings: Any,
    grp: ArrayGroup,
    ds: DatasetEntry,
    rows: list[list[str]],
    img_done: np.ndarray,
    encoder: TextEncoder,
    progress: ProgressFactory,
    dist: DistInfo,
    notes: list[str],
) -> tuple[int, int]:
    """Encode this process's pending shards; returns (images written, images already done)."""
    k = max(len(c) for c in rows)
    ranges = owned_ranges(ds.n, ds.shard, dist.rank, dist.world)
    done = grp.done[:]
    pending = [r for r in ranges if (done[r.start : r.stop] == PENDING).any()]
    already = sum(len(r) for r in ranges) - sum(len(r) for r in pending)
    written = 0
    locks = ShardLocks(settings.cache, grp.done)
    todo = sum(len(r) for r in pending)
    with progress(f"captions {encoder.id}", total=todo, unit="img") as bar, entry_writer(ds.group):
        for note in notes:
            bar.log(note)
        if already:
            bar.log(f"resuming: {already} images of this process were already done")
        try:
            for r in pending:
                locks.acquire(r.start // ds.shard)
                if not (np.asarray(grp.done[r.start : r.stop]) == PENDING).any():
                    locks.release(r.start // ds.shard)  # another process did it meanwhile
                    continue
                test_delay()
                codes = _write_shard(
                    grp, r, rows[r.start : r.stop], img_done, encoder, k, settings.captions,
                    bar.advance,
                )  # fmt: skip
                locks.release(r.start // ds.shard)
                written += int((codes == WRITTEN).sum())
        finally:
            locks.release_all()
    return written, already


def _read_keys(ds: DatasetEntry, img_done: np.ndarray) -> list[str]:
    """The file keys of the entry's rows, through the lost-chunk guard: a lost ``keys`` chunk
    would read as empty keys, and every image in it would be marked done without a caption."""
    redo = repair_hint(ds.name, "the same `repackctl extract`")
    keys = GuardedArray(ds.keys, img_done != PENDING, f"cache entry {ds.name} keys", redo)
    return [str(k) for k in keys[:]]


#: captions one image can have: ``count`` is uint8 (numpy 2 raised OverflowError mid-write at
#: 256, leaving a half-created group; older numpy wrapped 256 to 0: "no caption")
MAX_CAPTIONS = int(np.iinfo(np.uint8).max)


def _check_caption_counts(all_caps: list[list[str]], keys: list[str]) -> None:
    """Refuse, before anything is written, an image with more captions than ``count`` holds."""
    over = [(keys[i], len(c)) for i, c in enumerate(all_caps) if len(c) > MAX_CAPTIONS]
    if over:
        named = name_items([f"{k} ({n})" for k, n in over], 3)
        raise DataError(
            f"{len(over)} image(s) have more than {MAX_CAPTIONS} captions ({named}): the cache "
            f"keeps at most {MAX_CAPTIONS} per image; nothing was written",
            f"keep at most {MAX_CAPTIONS} captions per image in the index (each row is one)",
        )


def run_captions(
    settings: Any,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
    entry: str | None = None,
    encoder: TextEncoder | None = None,
) -> CaptionsResult:
    """Encode (or finish encoding) the captions of one cache entry: ``entry``, else
    ``captions.entry``, else the training entry of ``default_entries``."""
    cfg = settings.captions
    dist = dist or DistInfo.from_env()
    ds = DatasetEntry.open(settings.cache, entry or caption_entries(settings)[0])
    skipped: list[tuple[str, str]] = []
    img_done = ds.done[:]
    keys = _read_keys(ds, img_done)
    all_caps, read_from = _all_captions(ds, cfg.captions, keys, img_done, skipped)
    _check_caption_counts(all_caps, keys)
    encoder = encoder or load_text_encoder(settings, dist)
    cut = count_truncated(encoder, all_caps)
    grp, tid, healed = _open_group(
        ds, encoder, settings, all_caps, keys, cut.count, dist, read_from
    )
    warning = truncation_warning(cut, encoder.id, encoder.max_length)
    t0 = time.perf_counter()
    written, already = _encode_pending(
        settings, grp, ds, all_caps, img_done, encoder, progress, dist, [warning] if warning else []
    )
    dist.barrier()
    written, already, seconds = dist.job_totals(written, already, time.perf_counter() - t0)
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
        max_captions=max(len(c) for c in all_caps),
        skipped=skipped,
        seconds=seconds,
        healed=healed,
        truncated=cut.count,
        longest_tokens=cut.longest,
    )


def run_all_captions(
    settings: Any, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
) -> list[CaptionsResult]:
    """`repackctl captions`: every entry of ``caption_entries``, with one text encoder."""
    dist = dist or DistInfo.from_env()
    names = caption_entries(settings)
    encoder = load_text_encoder(settings, dist)
    return [run_captions(settings, progress, dist, name, encoder) for name in names]
