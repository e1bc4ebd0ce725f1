"""The Zarr v3 cache: one group per dataset split, features and packed latents inside it.

Layout (DESIGN.md §4)::

    <root>/<dataset>--<split>--<res>px/
        images uint8 (N, R, R, 3)   labels int32 (N,)   keys str (N,)   done uint8 (N,)
        fingerprints int64 (N, 6)   (image folders: size, mtime, sha256 of each image's file)
        features/<encoder-entry>/tokens float16 (N, F, T, C)   cls float16 (N, F, C)   done uint8 (N,)
        latents/<pack-id>/mean, std float16 (N, F, d, h, w)    done uint8 (N,)   stats in attrs

``done`` arrays sit beside the arrays they describe (Zarr arrays cannot hold children):
0 = pending, 1 = written, ≥ 2 = skipped, with the reason code in ``SKIP_REASONS``.
A group records, when created, the versions of the packages that decide its numbers
(``package_versions``, ``cache.versions``): a run that would write pending rows under other
versions is refused, so no array mixes rows of two implementations.

Measured on zarr 3.1.6 (environment.md): two processes writing different chunks of one shard lose
data, so writers own whole shard-aligned index ranges (``owned_ranges``) and ``done`` arrays are
chunked by shard (one file per writer range). Random single-sample reads are slow, so readers take
chunk-aligned blocks. float16 features barely compress, so they are stored uncompressed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from repackctl import __version__
from repackctl.cache.commands import remove_command
from repackctl.cache.creation import (
    CREATING,
    child_groups,
    child_state,
    creation_lock,
    damaged_where,
    discard_incomplete,
    local_root,
)
from repackctl.cache.ownership import claim_dir, drop_trash, group_dir, meta_problem
from repackctl.cache.versions import (
    RECORD,
    check_group_versions,
    check_versions,
    image_packages,
    versions_now,
)
from repackctl.crash import crash_point
from repackctl.errors import CacheError
from repackctl.paths import SAFE_NAME, cache_root, entry_name, is_url, local_path

PENDING, WRITTEN = 0, 1
ENTRY_ARRAYS = ("images", "labels", "keys", "done")
#: per image of a source that reads files (an image folder), the file the extract decoded:
#: size in bytes, ``st_mtime_ns`` and its sha256 as 4 big-endian int64 words; -1 (the fill)
#: where no image was written (a skipped input). Made with the entry (before its ``creating``
#: marker goes), but not required for it to be complete: entries of other sources, and those
#: made before it, have none (``DatasetEntry.fingerprints`` is None) and are not checked
#: (``cache.listing.check_files``).
FINGERPRINTS = "fingerprints"
FINGERPRINT_COLUMNS = ("size", "mtime_ns", "sha256_0", "sha256_1", "sha256_2", "sha256_3")
FEATURE_ARRAYS = ("tokens", "cls", "done")
# text/<id>/ (`repackctl captions`): sample-indexed arrays, plus the null caption's features,
# which describe the whole group (not sample-indexed; null_tokens is written last)
TEXT_NULL_ARRAYS = ("null_mask", "null_pooled", "null_tokens")
TEXT_ARRAYS = ("tokens", "mask", "pooled", "count", "captions", "null_tokens", "done")
#: per kind of sub-group, the arrays whose presence makes it complete (default: ``done``)
REQUIRED: dict[str, tuple[str, ...]] = {"features": FEATURE_ARRAYS, "text": TEXT_ARRAYS}

# A chunk equal to the fill value is still written: a missing chunk or shard then always means
# damage (``cache verify``), never "all zeros", and readers can refuse to read it as zeros.
zarr.config.set({"array.write_empty_chunks": True})
# A file the cache did not write is no zarr node: listings skip it and `cache rm` refuses to
# delete it, naming it (cache.ownership); zarr's own warning about it is noise on the console.
warnings.filterwarnings(
    "ignore", message=r"Object at .* is not recognized as a component of a Zarr hierarchy"
)


def checksummed(*codecs: Any) -> list[Any]:
    """Bytes codecs of a new array: ``codecs`` then a crc32c checksum of each (inner) chunk."""
    return [*codecs, Crc32cCodec()]


SKIP_REASONS = {
    2: "empty file",
    3: "corrupt or truncated",
    4: "not an image",
    5: "too large",
    6: "no caption",  # text features (repackctl captions): the image has no usable caption
}


def reason_code(reason: str) -> int:
    """Map a BadImage reason text to a ``done`` code."""
    text = reason.lower()
    if "empty" in text:
        return 2
    if "not an image" in text:
        return 4
    if "too large" in text:
        return 5
    return 3


class NoCache(CacheError):
    """There is no cache at the root (``list_entries`` reads that as no entries); a damaged root
    is another ``CacheError``, which is never read as an empty cache."""


def open_root(root: str, mode: str = "a") -> zarr.Group:
    """Open (or create, with mode 'a') the cache root group at a path or fsspec URL."""
    if not is_url(root):
        path = local_root(root)
        if mode == "r" and not (path / "zarr.json").exists():
            raise NoCache(f"no cache at {path}", "run `repackctl extract` first")
        if mode != "r":
            path.mkdir(parents=True, exist_ok=True)
        root = str(path)
    try:
        return zarr.open_group(root, mode=mode, zarr_format=3)
    except FileNotFoundError:
        raise NoCache(f"no cache at {root}", "run `repackctl extract` first") from None
    except Exception:
        meta = local_path(root) / "zarr.json" if not is_url(root) else None
        problem = meta_problem(meta) if meta is not None and meta.is_file() else None
        if problem is None:
            raise
        raise CacheError(
            f"the cache root's metadata {meta} {problem}; nothing was read or written",
            f"it holds only the root group's metadata, no data: write {ROOT_META} into it "
            "(or restore it from a copy of the cache)",
        ) from None


# what a cache root's zarr.json holds (a zarr v3 group without attributes)
ROOT_META = '{"zarr_format": 3, "node_type": "group", "attributes": {}}'


def damaged_error(parent: zarr.Group, name: str, what: str) -> CacheError:
    """The refusal to read or recreate ``what`` (the child ``name`` of ``parent``) whose
    metadata is damaged: the file is named; nothing is removed, since it may describe data."""
    where = damaged_where(parent, name)
    return CacheError(
        f"{what} has damaged metadata: {where}; nothing was read, written or removed",
        "restore that file from a copy of the cache, or remove the damaged group with "
        "`repackctl cache rm` and make it again",
    )


def list_entries(root: str, state: str = "complete") -> list[str]:
    """Names of the dataset entries in the cache (empty when there is no cache yet).

    ``state``: ``complete`` (usable entries), ``incomplete`` (creation interrupted) or ``all``.
    A local root that is a file is an error, not an empty cache.
    """
    if not is_url(root):
        local_root(root)
    try:
        g = open_root(root, mode="r")
    except NoCache:
        return []
    names = child_groups(g)
    if state == "all":
        return names
    return [n for n in names if child_state(g, n, ENTRY_ARRAYS) == state]


def owned_ranges(n: int, shard: int, rank: int = 0, world: int = 1) -> list[range]:
    """Shard-aligned sample ranges owned by ``rank`` of ``world`` writers (round-robin)."""
    count = (n + shard - 1) // shard
    return [range(s * shard, min((s + 1) * shard, n)) for s in range(rank, count, world)]


#: source attributes that only report what the listing passed over (files outside class
#: folders, unreadable folders): no input of the entry. A `captions.jsonl` written into the
#: folder for `repackctl captions` changed them, and every later extract of the entry (another
#: encoder, a resume) was refused, its hint removing the entry. `check_listing` still refuses a
#: folder whose files of the entry changed.
_LISTING_NOTES = ("skipped_in_listing",)


def _identity(source: dict) -> dict:
    """``source`` attributes without the listing notes (``_LISTING_NOTES``)."""
    return {k: v for k, v in source.items() if k not in _LISTING_NOTES}


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(parts[:4])


def _restoring_flags(old: dict, now: dict) -> list[str] | None:
    """The extract flags that give features of the same encoder the attributes ``old`` has,
    where only the precision and the flips differ (None when anything else does)."""
    differ = {k for k in set(old) | set(now) if old.get(k) != now.get(k)}
    if not differ or not differ <= {"precision", "flips"}:
        return None
    flags = [f"--precision {old.get('precision')}"] if "precision" in differ else []
    if "flips" in differ:
        flags.append("--no-flips" if int(old.get("flips") or 1) == 1 else "--flips")
    return flags


def features_precision(attrs: dict) -> str:
    """The precision a features group was computed in (``fp32``, ``bf16``, ``fp16``).

    Groups written before it was recorded: what that code computed, which was autocast on CUDA
    only (their run header names the device and the precision asked for), fp32 elsewhere.
    """
    if "precision" in attrs:
        return str(attrs["precision"])
    header = attrs.get("run_header") or {}
    if str(header.get("device", "")).startswith("cuda"):
        return str(header.get("precision") or "fp32")
    return "fp32"


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _held_out_words(held: dict | None) -> str:
    if not held:
        return "without --val-fraction (every image of the folder)"
    return f"with --val-fraction {held.get('fraction')} --seed {held.get('seed')}"


def _fraction_seed(held: dict | None) -> tuple[Any, Any]:
    return (held or {}).get("fraction"), (held or {}).get("seed")


def check_held_out(g: zarr.Group, name: str, split: str, source_attrs: dict) -> None:
    """Refuse an entry whose held-out split would overlap an entry of another split of the same
    folder: both must come from the same ``--val-fraction`` and ``--seed`` (``held_out`` in the
    source attributes), or the train and val images are no longer disjoint."""
    folder, held = source_attrs.get("root"), source_attrs.get("held_out")
    if not folder:
        return
    for other in child_groups(g):
        if other == name or child_state(g, other, ENTRY_ARRAYS) != "complete":
            continue
        attrs = dict(g[other].attrs)
        src = attrs.get("source") or {}
        if src.get("root") != folder or attrs.get("split") == split:
            continue
        theirs = src.get("held_out")
        if not (held or theirs) or _fraction_seed(held) == _fraction_seed(theirs):
            continue
        rm = f"`{remove_command(other)}`"
        raise CacheError(
            f"cache entry {other} (split {attrs.get('split')!r} of {folder}) was made "
            f"{_held_out_words(theirs)}, but split {split!r} is asked {_held_out_words(held)}: "
            "the two splits would overlap",
            f"pass --val-fraction {theirs.get('fraction')} --seed {theirs.get('seed')} as {other} "
            f"was made, or remove it with {rm}"
            if theirs
            else f"remove it with {rm}, then extract split {attrs.get('split')!r} "
            f"{_held_out_words(held)} too",
        )


def checked_done(group: zarr.Group) -> np.ndarray:
    """``group``'s ``done`` codes (an entry's or a features / latents group's). A chunk that
    fails its checksum is a ``CacheError`` naming the chunk and `cache verify --repair`, not
    zarr's ``ValueError`` (a traceback)."""
    from repackctl.cache.integrity import checked_array

    try:
        return checked_array(group, "done")[:]
    except CacheError:
        raise
    except Exception:
        from repackctl.cache.integrity import read_done

        entry, _, path = group.path.partition("/")
        label = f"{path}/done" if path else "done"
        done, bad = read_done(group["done"], label)
        if not bad:
            return done
        raise CacheError(
            f"cache entry {entry}: {bad[0]}: which of its rows are written is not known",
            f"run `repackctl cache verify {entry} --repair` (it marks them pending and names "
            "the command that writes them again)",
        ) from None


@dataclass
class ArrayGroup:
    """A set of sample-indexed arrays with their ``done`` array (features or latents)."""

    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def done(self) -> zarr.Array:
        return self["done"]

    def __getitem__(self, name: str) -> zarr.Array:
        """The array ``name``, refused when it lost its checksum codec (``checked_array``)."""
        from repackctl.cache.integrity import checked_array

        return checked_array(self.group, name)

    def done_mask(self) -> np.ndarray:
        """The ``done`` codes, read by :func:`checked_done`."""
        return checked_done(self.group)

    def complete(self) -> bool:
        return bool((self.done_mask() != PENDING).all())


def features_id_problem(attrs: dict[str, Any], fid: str) -> str | None:
    """Why the attributes of the features group ``fid`` disagree with its id, or None: the id
    ends with the first 10 hex digits of the encoder's weights digest (``EncoderSpec.entry_id``),
    which the attributes record in full (``encoder.weights_sha256``; without one, of the
    ``weights`` tag). The attributes carry no checksum: an edited digest was taken as the
    encoder of the features (``pack train`` recorded it) though the id names another."""
    enc = attrs.get("encoder")
    tail = fid.rsplit("--", 1)[-1]
    if not isinstance(enc, dict) or not re.fullmatch(r"[0-9a-f]{10}", tail):
        return None  # not an id of that form (a plugin's), or nothing recorded to compare
    sha, weights = enc.get("weights_sha256"), enc.get("weights")
    if isinstance(sha, str) and sha:
        recorded, what = sha, "encoder.weights_sha256"
    elif isinstance(weights, str):
        recorded, what = (
            hashlib.sha256(weights.encode()).hexdigest(),
            "the sha256 of encoder.weights",
        )
    else:
        return f"its attributes record no encoder weights digest (the id says {tail})"
    if recorded[:10] == tail:
        return None
    return (
        f"its attributes record {what} {recorded[:10]}…, but the group's id names {tail} "
        "(zarr.json edited?): the features cannot be told to come from the encoder they record"
    )


def features_id_fix(group: zarr.Group) -> str:
    """The hint of :func:`features_id_problem` for the features ``group``: its zarr.json from
    a copy, or the group made anew."""
    entry, _, fid = group.path.split("/", 2)
    folder = group_dir(group)
    meta = folder / "zarr.json" if folder is not None else f"{group.path}/zarr.json"
    return (
        f"restore {meta} from a copy of the cache, or remove the group with "
        f"`{remove_command(entry, 'features', fid, yes=True)}` and extract it again"
    )


def _extract_flags(name: str) -> str:
    """The -n, split and resolution flags of an entry name ``<dataset>--<split>--<R>px``; ""
    for other names. A dataset part ending in ``-n<N>`` (``data.sources.dataset_label``) was
    made with ``-n N``: without it the extract made another entry (``builtin--val--64px`` for
    ``builtin-n300--val--64px``). --data stays the user's to add."""
    parts = name.split("--")
    if len(parts) != 3 or not parts[2].endswith("px") or not parts[2][:-2].isdigit():
        return ""
    size = re.search(r"-n(\d+)$", parts[0])
    num = f" -n {int(size.group(1))}" if size else ""
    return f"{num} --split {parts[1]} --resolution {parts[2][:-2]}"


class DatasetEntry:
    """One dataset split at one resolution in the cache."""

    def __init__(self, root: str, group: zarr.Group) -> None:
        self.root = root
        self.group = group
        self.name = group.basename

    # ---- creation / opening ------------------------------------------------------------------
    @classmethod
    def open(cls, root: str, name: str) -> DatasetEntry:
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise CacheError(
                f"no entry named {name!r} in {cache_root(root)} (an entry name is one path "
                "component, like builtin--train--64px)",
                "list the entries with `repackctl cache ls`",
            )
        g = open_root(root, mode="r")
        state = child_state(g, name, ENTRY_ARRAYS)
        if state == "absent":
            have = ", ".join(list_entries(root)) or "none"
            raise CacheError(
                f"cache entry {name!r} not found in {cache_root(root)} (have: {have})",
                f"run `repackctl extract{_extract_flags(name)}` for it, or check --cache",
            )
        if state == "damaged":
            raise damaged_error(g, name, f"cache entry {name!r} in {cache_root(root)}")
        if state == "incomplete":
            raise CacheError(
                f"cache entry {name!r} in {cache_root(root)} is incomplete (its creation was "
                "interrupted)",
                "run the same `repackctl extract` again: it removes the unfinished entry and "
                "creates it",
            )
        return cls(root, open_root(root, mode="a")[name])

    @classmethod
    def create_or_open(
        cls,
        root: str,
        dataset: str,
        split: str,
        resolution: int,
        n: int,
        source_attrs: dict,
        class_names: list[str] | None,
        chunk: int,
        shard: int,
        files: bool = False,
        packages: tuple[str, ...] = ("repackctl",),
    ) -> DatasetEntry:
        """Create the entry and its image arrays, or open it if its source attributes agree.

        ``files``: the source reads files (an image folder): a new entry gets a ``fingerprints``
        array (``FINGERPRINTS``); an existing one keeps what it has. ``packages``: those that
        decide the source's pixels (``data.base.source_packages``), whose versions a new entry
        records (``RECORD``, as groups do); an existing one is opened as it is, and its writer
        asks ``check_image_versions`` before it writes images."""
        name = entry_name(dataset, split, resolution)
        source_attrs = _jsonable(source_attrs)
        with creation_lock(root):
            g = open_root(root, mode="a")
            _claim(g, name)
            check_held_out(g, name, split, source_attrs)
            state = child_state(g, name, ENTRY_ARRAYS)
            if state == "damaged":
                raise damaged_error(g, name, f"cache entry {name!r} in {cache_root(root)}")
            if state == "complete":
                entry = cls(root, g[name])
                old = _identity(entry.attrs.get("source", {}))
                if old != _identity(source_attrs) or entry.n != n:
                    raise CacheError(
                        f"cache entry {name} was made from another source "
                        f"({_diff(old, _identity(source_attrs))})",
                        f"remove it with `{remove_command(name)}` or use another --cache",
                    )
                return entry
            check_layout(chunk, shard)  # where they are applied: an existing entry keeps its own
            if state == "incomplete":
                discard_incomplete(g, name)
            attrs = {
                "dataset": dataset,
                "split": split,
                "resolution": resolution,
                "n": n,
                "chunk": chunk,
                "shard": shard,
                "source": source_attrs,
                "class_names": class_names,
                "num_classes": len(class_names) if class_names else 0,
                "layout_version": 1,
                "repackctl_version": __version__,
                RECORD: versions_now(packages),
            }
            drop_trash(g, name)
            sub = g.create_group(name, attributes=attrs | {CREATING: True})
            crash_point("entry")
            _create_entry_arrays(sub, n, resolution, chunk, shard, files)
            del sub.attrs[CREATING]
            return cls(root, sub)

    def check_image_versions(
        self, packages: tuple[str, ...], pending: Callable[[], bool] | None = None
    ) -> None:
        """Refuse (``CacheError``, before anything is written) to write image rows of this entry
        under other versions of ``packages`` than it records (``cache.versions.check_versions``).

        ``pending()``: whether the run would write image rows, asked only when the versions
        differ (default: any row pending). Not refused: an entry whose images are all written
        (another encoder's extract reads its pixels whatever is installed), and one made before
        the record (none)."""

        def any_pending() -> bool:
            return bool((self.done_mask() == PENDING).any())

        check_versions(
            self.attrs,
            versions_now(packages),
            f"the images of {self.name}",
            remove_command(self.name),
            pending or any_pending,
        )

    # ---- properties --------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def n(self) -> int:
        return int(self.group.attrs["n"])

    @property
    def resolution(self) -> int:
        return int(self.group.attrs["resolution"])

    @property
    def chunk(self) -> int:
        return int(self.group.attrs["chunk"])

    @property
    def shard(self) -> int:
        return int(self.group.attrs["shard"])

    @property
    def class_names(self) -> list[str] | None:
        return self.group.attrs.get("class_names")

    @property
    def images(self) -> zarr.Array:
        return self._array("images")

    @property
    def labels(self) -> zarr.Array:
        return self._array("labels")

    @property
    def keys(self) -> zarr.Array:
        return self._array("keys")

    @property
    def done(self) -> zarr.Array:
        return self._array("done")

    def _array(self, name: str) -> zarr.Array:
        """The entry's array ``name``, refused when it lost the checksum codec the cache writes
        (``integrity.checked_array``): a reader would take its chunks unchecked."""
        from repackctl.cache.integrity import checked_array

        return checked_array(self.group, name)

    @property
    def fingerprints(self) -> zarr.Array | None:
        """The file of each image as the extract read it (``FINGERPRINTS``); None for an entry
        of a source without files, or one made before fingerprints were recorded."""
        return self._array(FINGERPRINTS) if FINGERPRINTS in self.group else None

    def done_mask(self) -> np.ndarray:
        """The entry's ``done`` codes (its images), read by :func:`checked_done`."""
        return checked_done(self.group)

    def valid_indices(self) -> np.ndarray:
        """Indices of samples written successfully (skipped and pending ones excluded)."""
        return np.flatnonzero(self.done_mask() == WRITTEN)

    # ---- features ----------------------------------------------------------------------------
    def complete_groups(self, kind: str, required: tuple[str, ...] = ("done",)) -> list[str]:
        if kind not in self.group:
            return []
        parent = self.group[kind]
        return [n for n in child_groups(parent) if child_state(parent, n, required) == "complete"]

    def incomplete_groups(self, state: str = "incomplete") -> list[str]:
        """``kind/name`` of the groups whose creation was interrupted (listed, never read), or
        with ``state="damaged"`` of those with an unreadable ``zarr.json``."""
        out = []
        for kind in ("features", "latents", "triplets", "text"):
            if kind in self.group:
                parent = self.group[kind]
                req = REQUIRED.get(kind, ("done",))
                out += [
                    f"{kind}/{n}"
                    for n in child_groups(parent)
                    if child_state(parent, n, req) == state
                ]
        return out

    def check_not_damaged(self, kind: str, name: str, what: str) -> None:
        """Refuse to call the group ``kind/name`` missing when its metadata is damaged."""
        if f"{kind}/{name}" in self.incomplete_groups("damaged"):
            raise damaged_error(self.group[kind], name, f"{what} {name} of {self.name}")

    def text_ids(self) -> list[str]:
        """The complete caption-feature groups (``text/<id>``, written by `repackctl captions`)."""
        return self.complete_groups("text", TEXT_ARRAYS)

    def feature_ids(self) -> list[str]:
        return self.complete_groups("features", FEATURE_ARRAYS)

    def features(self, encoder_entry: str) -> ArrayGroup:
        if encoder_entry not in self.feature_ids():
            self.check_not_damaged("features", encoder_entry, "features")
            have = ", ".join(self.feature_ids()) or "none"
            raise CacheError(
                f"no features {encoder_entry!r} in {self.name} (have: {have})",
                "run `repackctl extract --encoder …` with the same encoder, weights and layer",
            )
        from repackctl.cache.integrity import metadata_checked

        group = ArrayGroup(self.group["features"][encoder_entry])
        problem = features_id_problem(group.attrs, encoder_entry) if metadata_checked() else None
        if problem:
            raise CacheError(
                f"features/{encoder_entry} of {self.name}: {problem}; nothing was read",
                features_id_fix(group.group),
            )
        return group

    def create_or_open_features(
        self,
        encoder_entry: str,
        spec_attrs: dict,
        flips: int,
        tokens: int,
        dim: int,
        precision: str = "fp32",
        packages: tuple[str, ...] | None = None,
    ) -> ArrayGroup:
        """Feature arrays of one encoder; an existing entry must have the same spec and the same
        compute precision (features are computed in one precision, never a mix), and, while it
        has pending rows, the package versions it was made with (``cache.versions``):
        ``packages`` (default ``image_packages(spec_attrs)``: torch, repackctl, timm for a timm
        model) are recorded at creation and compared on open."""
        versions = versions_now(packages or image_packages(spec_attrs))
        attrs = {"encoder": spec_attrs, "flips": flips, "tokens": tokens, "dim": dim}
        attrs = _jsonable(attrs | {"precision": precision})
        c, s, n = self.chunk, self.shard, self.n

        def build(sub: zarr.Group) -> None:
            for name, shape in (("tokens", (flips, tokens, dim)), ("cls", (flips, dim))):
                sub.create_array(
                    name,
                    shape=(n, *shape),
                    chunks=(c, *shape),
                    shards=(s, *shape),
                    dtype="float16",
                    compressors=checksummed(),
                )
                crash_point(name)
            _done_array(sub, n, s)

        grp, _ = self._create_or_open(
            "features",
            encoder_entry,
            attrs,
            build,
            FEATURE_ARRAYS,
            self._features_mismatch,
            lambda a: {"precision": features_precision(a)},
            versions,
        )
        return grp

    def _features_mismatch(self, kind: str, name: str, old: dict, attrs: dict) -> CacheError:
        old_enc, new_enc = old.get("encoder") or {}, attrs["encoder"]
        what = _diff(old_enc, new_enc) or _diff(old, attrs)
        hint = f"remove them with `{remove_command(self.name, 'features', name)}`"
        restore = _restoring_flags(old, attrs) if old_enc == new_enc else None
        if restore:
            hint = f"use {' '.join(restore)} to continue or reuse them, or {hint}"
        return CacheError(
            f"features {name} in {self.name} were made with another spec ({what})", hint
        )

    def _create_or_open(
        self,
        kind: str,
        name: str,
        attrs: dict,
        build: Callable[[zarr.Group], None] | None,
        required: tuple[str, ...],
        mismatch: Callable[[str, str, dict, dict], CacheError],
        implied: Callable[[dict], dict] | None = None,
        versions: dict[str, str] | None = None,
    ) -> tuple[ArrayGroup, bool]:
        """Open ``kind/name`` if complete and alike, else (re)create it atomically.

        ``implied(stored)`` gives the values of attributes that a group written before they were
        recorded holds implicitly; a recorded value always wins. ``versions`` (package →
        installed version): recorded in a new group (``RECORD``); an existing one recorded under
        others is refused while it has pending rows (``cache.versions.check_versions``), before
        the caller writes anything. Not compared like ``attrs``: a finished group is read
        whatever is installed now.
        """
        with creation_lock(self.root):
            _claim(self.group, kind)
            parent = self.group.require_group(kind)
            _claim(parent, name)
            state = child_state(parent, name, required)
            if state == "damaged":
                raise damaged_error(parent, name, f"{kind}/{name} of cache entry {self.name}")
            if state == "complete":
                grp = ArrayGroup(parent[name])
                stored = dict(grp.attrs)
                stored = (implied(stored) if implied else {}) | stored
                old = {k: stored.get(k) for k in attrs}
                if old != attrs:
                    raise mismatch(kind, name, old, attrs)
                if versions is not None:
                    self._check_versions(grp, kind, name, versions)
                return grp, False
            if state == "incomplete":
                discard_incomplete(parent, name)
            drop_trash(parent, name)
            tags = {"repackctl_version": __version__} | ({RECORD: versions} if versions else {})
            sub = parent.create_group(name, attributes=attrs | tags | {CREATING: True})
            crash_point(kind)
            if build is not None:
                build(sub)
            if "done" not in set(sub.array_keys()):
                _done_array(sub, self.n, self.shard)
            del sub.attrs[CREATING]
            return ArrayGroup(sub), True

    def _check_versions(
        self, grp: ArrayGroup, kind: str, name: str, versions: dict[str, str]
    ) -> None:
        """Refuse to write pending rows of ``kind/name`` under other package versions than it
        records (``cache.versions.check_group_versions``); its ``done`` is read only if they
        differ."""
        check_group_versions(
            grp.attrs, versions, self.name, kind, name, lambda: (grp.done_mask() == PENDING).any()
        )

    # ---- latents -----------------------------------------------------------------------------
    def latent_ids(self) -> list[str]:
        return self.complete_groups("latents")

    def latents(self, pack_id: str) -> ArrayGroup:
        if pack_id not in self.latent_ids():
            self.check_not_damaged("latents", pack_id, "packed latents")
            have = ", ".join(self.latent_ids()) or "none"
            raise CacheError(
                f"no packed latents {pack_id!r} in {self.name} (have: {have})",
                "run `repackctl pack encode --run RUN` first",
            )
        return ArrayGroup(self.group["latents"][pack_id])

    def create_or_open_group(
        self,
        kind: str,
        entry: str,
        attrs: dict,
        build: Callable[[zarr.Group], None] | None = None,
        required: tuple[str, ...] = ("done",),
        versions: dict[str, str] | None = None,
    ) -> tuple[ArrayGroup, bool]:
        """A generic sample-indexed group under ``kind`` (``latents``, ``triplets``…).

        ``build(group)`` adds its arrays before the group counts as created (``required``
        names them, so a group an older version left half made is recognised too).
        Returns (group, created). An existing group must have the same attributes, and, while
        rows are pending, the package ``versions`` it records (``_create_or_open``).
        """

        def mismatch(kind: str, name: str, old: dict, new: dict) -> CacheError:
            return CacheError(
                f"{kind}/{name} in {self.name} was made with other settings ({_diff(old, new)})",
                f"remove it with `{remove_command(self.name, kind, name)}`",
            )

        return self._create_or_open(
            kind, entry, _jsonable(attrs), build, required, mismatch, versions=versions
        )

    def add_sample_array(
        self, group: zarr.Group | ArrayGroup, name: str, sample_shape: tuple[int, ...], dtype: str
    ) -> zarr.Array:
        """Create a sample-indexed array (this entry's chunk/shard layout, crc32c per chunk)."""
        c, s = self.chunk, self.shard
        if isinstance(group, ArrayGroup):
            group = group.group
        arr = group.create_array(
            name,
            shape=(self.n, *sample_shape),
            chunks=(c, *sample_shape),
            shards=(s, *sample_shape),
            dtype=dtype,
            compressors=checksummed(),
        )
        crash_point(name)
        return arr


def check_layout(chunk: int, shard: int) -> None:
    """Refuse a shard size that is not a multiple of the chunk size, for a new entry (an existing
    one keeps its own layout: the values are not applied, and extract says so)."""
    if shard % chunk:
        raise CacheError(
            f"shard size {shard} is not a multiple of chunk size {chunk}",
            "pass --shard as a multiple of --chunk (e.g. --chunk 32 --shard 1024)",
        )


def _claim(parent: zarr.Group, name: str) -> None:
    """Refuse to create the child ``name`` of ``parent`` over a local folder that is not ours."""
    folder = group_dir(parent)
    if folder is not None:
        claim_dir(folder / name)


def _done_array(group: zarr.Group, n: int, shard: int) -> zarr.Array:
    arr = group.create_array(
        "done", shape=(n,), chunks=(shard,), dtype="uint8", fill_value=0, compressors=checksummed()
    )
    crash_point("done")
    return arr


def _create_entry_arrays(
    sub: zarr.Group, n: int, r: int, chunk: int, shard: int, files: bool = False
) -> None:
    sub.create_array(
        "images",
        shape=(n, r, r, 3),
        chunks=(chunk, r, r, 3),
        shards=(shard, r, r, 3),
        dtype="uint8",
        compressors=checksummed(BloscCodec(cname="zstd", clevel=3)),
    )
    crash_point("images")
    sub.create_array(
        "labels",
        shape=(n,),
        chunks=(shard,),
        dtype="int32",
        fill_value=-1,
        compressors=checksummed(),
    )
    crash_point("labels")
    sub.create_array("keys", shape=(n,), chunks=(shard,), dtype=str, compressors=checksummed())
    crash_point("keys")
    if files:  # one chunk per shard, as keys: each writer writes whole chunks of its own
        width = len(FINGERPRINT_COLUMNS)
        sub.create_array(
            FINGERPRINTS,
            shape=(n, width),
            chunks=(shard, width),
            dtype="int64",
            fill_value=-1,
            compressors=checksummed(),
        )
        crash_point(FINGERPRINTS)
    _done_array(sub, n, shard)


def read_blocks(
    array: zarr.Array, indices: np.ndarray, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, data) reading contiguous runs of ``indices`` as slices, ≤ ``block`` long."""
    if len(indices) == 0:
        return
    indices = np.asarray(indices)
    start = 0
    for i in range(1, len(indices) + 1):
        end_run = i == len(indices) or indices[i] != indices[i - 1] + 1 or i - start >= block
        if end_run:
            lo, hi = int(indices[start]), int(indices[i - 1]) + 1
            yield indices[start:i], array[lo:hi]
            start = i


class ChunkReader:
    """Whole-chunk reads of one sample-indexed Zarr array through a thread-safe LRU buffer.

    The training samplers visit chunk-sized blocks shuffled within a buffer of blocks, so with
    ``capacity`` at least that buffer every chunk is read once per epoch (measured ~8x faster
    than reading each contiguous run of a batch on its own, ``repackctl benchmark cache``).
    """

    def __init__(self, array: Any, chunk: int, capacity: int) -> None:
        self.array = array
        self.chunk = chunk
        self.capacity = max(1, capacity)
        self._buf: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0

    def _chunk(self, c: int) -> np.ndarray:
        with self._lock:
            if c in self._buf:
                self._buf.move_to_end(c)
                return self._buf[c]
        lo = c * self.chunk
        data = self.array[lo : min(lo + self.chunk, self.array.shape[0])]  # chunk-aligned read
        with self._lock:
            self.reads += 1
            self._buf[c] = data
            while len(self._buf) > self.capacity:
                self._buf.popitem(last=False)
        return data

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (cache indices, any order) as one array."""
        out = None
        for j, i in enumerate(np.asarray(indices).tolist()):
            row = self._chunk(i // self.chunk)[i % self.chunk]
            if out is None:
                out = np.empty((len(indices), *row.shape), row.dtype)
            out[j] = row
        return out


def update_changed(attrs: Any, values: dict[str, Any]) -> None:
    """Write only the attributes whose value changes: a rerun that finds everything done leaves
    the cache's files untouched (and the record of the run that wrote them)."""
    changed = {k: v for k, v in values.items() if k not in attrs or attrs[k] != v}
    if changed:
        attrs.update(changed)
