"""Describe and verify cache entries: shapes, done counts, NaN/inf, attributes against arrays."""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from repackctl.cache.commands import (
    captions_command,
    features_extract_command,
    finish_command,
    remove_command,
)
from repackctl.cache.creation import (
    child_groups,
    child_nodes,
    damaged_child,
    damaged_where,
    holds_samples,
    readers_out,
    writers_out,
)
from repackctl.cache.integrity import (
    Damage,
    lost_checksum_fix,
    lost_checksum_text,
    lost_checksums,
    metadata_unchecked,
    read_done,
    scan_array,
)
from repackctl.cache.ownership import partial_leftovers, sweep_partials
from repackctl.cache.partials import (
    combine_partials,
    latents_producer,
    partials_damage,
    shard_rows,
    shards_off_data,
    stats_match,
)
from repackctl.cache.removal import entry_folder
from repackctl.cache.store import (
    FINGERPRINT_COLUMNS,
    FINGERPRINTS,
    PENDING,
    REQUIRED,
    TEXT_NULL_ARRAYS,
    WRITTEN,
    ArrayGroup,
    DatasetEntry,
    features_id_fix,
    features_id_problem,
    features_precision,
)
from repackctl.cache.versions import RECORD as VERSIONS
from repackctl.errors import CacheError, RepackError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an entry, as `cache verify` prints it.

    ``fix`` is set for a *lasting* problem, one that `verify --repair` and a rerun of the command
    that wrote the rows leave as it is (NaN/inf rows, wrong shapes): it names what does fix it.
    """

    text: str
    fix: str | None = None

    @property
    def lasting(self) -> bool:
        return self.fix is not None

    def __str__(self) -> str:
        return self.text


@dataclass
class EntryInfo:
    """A summary of one dataset entry."""

    name: str
    n: int
    resolution: int
    written: int
    skipped: int
    pending: int
    classes: int
    bytes: int
    features: dict[str, dict] = field(default_factory=dict)
    latents: dict[str, dict] = field(default_factory=dict)
    triplets: dict[str, dict] = field(default_factory=dict)  # refiner triplets (refine train)
    text: dict[str, dict] = field(default_factory=dict)  # caption features (captions)
    incomplete: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # groups with an unreadable zarr.json
    #: groups (``images`` for the entry's own rows, else ``kind/id``) with a corrupt ``done``
    #: chunk: its rows count as pending here, but no writer resumes them before `verify --repair`
    corrupt_done: list[str] = field(default_factory=list)

    def incomplete_of(self, kind: str) -> list[str]:
        """``<name> (incomplete)`` for the interrupted groups of ``kind``, ``<name> (damaged)``
        for those whose metadata cannot be read."""
        return [
            f"{g.split('/', 1)[1]} ({state})"
            for state, groups in (("incomplete", self.incomplete), ("damaged", self.damaged))
            for g in groups
            if g.startswith(kind)
        ]


def _nbytes(group: zarr.Group) -> int:
    """Stored bytes of the arrays below ``group``; a child whose metadata cannot be read (see
    ``EntryInfo.damaged``) counts nothing."""
    total = 0
    for name in child_nodes(group):
        try:
            node = group[name]
        except Exception:
            continue
        total += _nbytes(node) if isinstance(node, zarr.Group) else int(node.nbytes_stored())
    return total


def _counts(done: np.ndarray) -> dict[str, int]:
    return {
        "written": int((done == WRITTEN).sum()),
        "skipped": int((done >= 2).sum()),
        "pending": int((done == PENDING).sum()),
    }


@metadata_unchecked()  # a listing: `cache verify` names an array that lost its checksum codec
def describe_entry(entry: DatasetEntry) -> EntryInfo:
    corrupt: list[str] = []

    def counts(done: zarr.Array, path: str) -> dict[str, int]:
        """Counts of ``done``, whose corrupt chunks read as pending (``corrupt_done``)."""
        codes, bad = read_done(done, "done")
        if bad:
            corrupt.append(path)
        return _counts(codes)

    own = counts(entry.done, "images")
    info = EntryInfo(
        name=entry.name,
        n=entry.n,
        resolution=entry.resolution,
        classes=int(entry.attrs.get("num_classes", 0)),
        bytes=_nbytes(entry.group),
        incomplete=entry.incomplete_groups(),
        damaged=entry.incomplete_groups("damaged"),
        corrupt_done=corrupt,
        **own,
    )
    for fid in entry.feature_ids():
        g = entry.features(fid)
        enc = g.attrs.get("encoder", {})
        info.features[fid] = {
            "shape": list(g["tokens"].shape),
            "weights": enc.get("weights"),
            "versions": g.attrs.get(VERSIONS),
            **counts(g.done, f"features/{fid}"),
        }
    for lid in entry.latent_ids():
        g = entry.latents(lid)
        arrays = {name: list(a.shape) for name, a in g.group.arrays() if name != "done"}
        versions = g.attrs.get(VERSIONS)
        info.latents[lid] = {
            "arrays": arrays,
            "versions": versions,
            **counts(g.done, f"latents/{lid}"),
        }
    for kind in ("triplets", "text"):  # the ids `cache rm --triplets / --text` take
        for gid in entry.complete_groups(kind):
            g = entry.group[kind][gid]
            arrays = {name: list(a.shape) for name, a in g.arrays() if name != "done"}
            versions = g.attrs.get(VERSIONS)  # none for triplets, and groups made before it
            about = {"arrays": arrays, "versions": versions}
            getattr(info, kind)[gid] = about | counts(g["done"], f"{kind}/{gid}")
    return info


#: the kinds of groups an entry holds, in the columns of `cache ls`
GROUP_KINDS = ("features", "latents", "triplets", "text")


@metadata_unchecked()  # a listing, as ``describe_entry``
def unfinished_groups(entry: DatasetEntry, info: EntryInfo) -> list[dict[str, Any]]:
    """``group`` (``images`` for the entry's own rows, else ``kind/id``), ``pending`` and ``n``
    rows, and the command that ``finish``es them, of each part of ``entry`` with pending rows:
    an extract, `pack encode`, captions or refine run that was killed (or rows `cache verify
    --repair` marked). Listed as they were, such groups looked finished."""
    parts = [("", info.pending)]
    parts += [
        (f"{kind}/{gid}", int(g.get("pending", 0)))
        for kind in GROUP_KINDS
        for gid, g in getattr(info, kind).items()
    ]
    out = []
    for path, pending in parts:
        if not pending:
            continue
        try:
            finish = finish_command(entry, path)
        except (RepackError, KeyError, TypeError, ValueError):  # unreadable records: not named
            finish = "the command that wrote it (not recorded)"
        if (path or "images") in info.corrupt_done:  # its writer refuses it until repaired
            finish = (
                f"`repackctl cache verify {entry.name} --repair` (a chunk of its done array is "
                f"corrupt: which rows are written is not known), then {finish}"
            )
        elif not path and orphan_rows(entry).any():  # the extract refuses it until repaired
            finish = (
                f"`repackctl cache verify {entry.name} --repair` (its done array lost rows that "
                f"its features record as written), then {finish}"
            )
        out.append({"group": path or "images", "pending": pending, "n": info.n, "finish": finish})
    return out + _statless(entry, info)


def _statless(entry: DatasetEntry, info: EntryInfo) -> list[dict[str, Any]]:
    """The ``unfinished_groups`` items of latents groups whose stats were never written
    (``unwritten_stats``; ``pending`` 0, ``stats`` False), unless a writer holds the entry."""
    lids = [lid for lid, g in info.latents.items() if not g.get("pending")]
    found = [lid for lid in lids if unwritten_stats(entry, lid)]
    if not found or writer_active(entry):
        return []
    return [
        {
            "group": f"latents/{lid}",
            "pending": 0,
            "n": info.n,
            "finish": producer(entry, f"latents/{lid}"),
            "stats": False,
        }
        for lid in found
    ]


def _scan_finite(arr: zarr.Array, done: np.ndarray, block: int) -> int:
    """Number of written samples with a NaN/inf, reading chunk-aligned blocks."""
    bad = 0
    for lo in range(0, arr.shape[0], block):
        hi = min(lo + block, arr.shape[0])
        ok = done[lo:hi] == WRITTEN
        if not ok.any():
            continue
        try:
            data = np.asarray(arr[lo:hi])[ok].astype(np.float32)
        except Exception:  # a damaged chunk: reported by scan_chunks
            continue
        bad += int((~np.isfinite(data.reshape(len(data), -1))).any(1).sum())
    return bad


def verify_entry(entry: DatasetEntry, found: list | None = None) -> list[Problem]:
    """Problems found in ``entry`` (empty list = healthy).

    ``found`` (the result of ``scan_chunks``) is computed here when not given. Damaged chunks
    come first; `verify --repair` fixes them, not the lasting problems (``Problem.fix``).
    """
    found = scan_chunks(entry) if found is None else found
    problems = [Problem(_damage_text(path, d)) for path, d in found]
    problems += metadata_problems(entry)
    lost = np.zeros(entry.n, bool)  # rows of the entry's done chunks that the repair restores
    for path, d in found:
        if not path and d.array == "done":
            lost[d.lo : d.hi] = True
    try:
        with metadata_unchecked():  # named above: the other checks go on
            return problems + _verify_arrays(entry, lost)
    except Exception as e:  # an unreadable array not caught above: report, never a traceback
        return [*problems, Problem(f"unreadable: {type(e).__name__}: {e}", rewrite(entry, ""))]


def metadata_problems(entry: DatasetEntry) -> list[Problem]:
    """Lasting problems of edited metadata (``--repair`` rewrites no metadata), which readers
    refuse: arrays of ``entry`` and its groups that lost the crc32c codec the cache wrote them
    with (``integrity.lost_checksums``), and features groups whose recorded weights digest is
    not the one their id names (``store.features_id_problem``). Before, verify said ok."""
    problems = [
        Problem(lost_checksum_text(group, name), lost_checksum_fix(group, name))
        for _, group in _groups(entry)
        for name in lost_checksums(group)
    ]
    for fid in entry.feature_ids():
        group = entry.group["features"][fid]
        why = features_id_problem(dict(group.attrs), fid)
        if why:
            problems.append(Problem(f"features/{fid}: {why}", features_id_fix(group)))
    return problems


def left_after_repair(entry: DatasetEntry, problems: list[Problem]) -> list[Problem]:
    """The lasting problems still there after ``repair_rows``.

    Re-checked only when there were some: rows that the repair marked pending are no longer
    read, so NaN rows inside a repaired shard are rewritten by the rerun and no longer count.
    """
    if not any(p.lasting for p in problems):
        return []
    return [p for p in verify_entry(entry) if p.lasting]


def rewrite(entry: DatasetEntry, path: str) -> str:
    """The commands that write the group at ``path`` (the entry itself when empty) anew."""
    kind, _, name = path.partition("/")
    return f"`{remove_command(entry.name, kind, name, yes=True)}`, then {producer(entry, path)}"


def nonfinite_rewrite(entry: DatasetEntry, path: str) -> str:
    """The commands that write the group at ``path`` anew without its NaN/inf rows: features
    computed in fp16 / bf16 are recomputed in fp32 (the command names it)."""
    if path.startswith("features/"):
        precision = features_precision(entry.group[path].attrs)
        if precision != "fp32":
            fid = path.partition("/")[2]
            cmd = features_extract_command(entry, fid, precision="fp32")
            rm = remove_command(entry.name, "features", fid, yes=True)
            return f"`{rm}`, then `{cmd}` (they were computed in {precision})"
    return rewrite(entry, path)


def _nonfinite_fix(entry: DatasetEntry, path: str) -> str:
    """What rewrites NaN/inf rows: `--repair` does not (their chunks read fine)."""
    return f"`--repair` leaves NaN/inf rows as they are: {nonfinite_rewrite(entry, path)}"


def _damage_text(path: str, d: Damage) -> str:
    """A damaged chunk as `cache verify` lists it; one of the entry's ``done`` says what the
    repair does with its rows (:func:`restore_done`)."""
    if path or d.array != "done":
        return str(d)
    return (
        f"{d} (`--repair` restores the rows that its features record as written where their "
        "images are intact, else marks them pending)"
    )


def _verify_arrays(entry: DatasetEntry, lost: np.ndarray | None = None) -> list[Problem]:
    """The entry's arrays, attributes and groups against each other. ``lost``: rows of damaged
    ``done`` chunks of the entry (listed already, with what `--repair` does): counted as their
    features record them, not as pending rows that resuming the extract writes (it does not:
    it resumes from the features' ``done``)."""
    problems: list[Problem] = []
    n, r = entry.n, entry.resolution
    expect = {"images": (n, r, r, 3), "labels": (n,), "keys": (n,), "done": (n,)}
    # image folders' entries record each item's file; other entries, and older ones, do not
    optional = {FINGERPRINTS: (n, len(FINGERPRINT_COLUMNS))}
    anew = rewrite(entry, "")
    for name, shape in (expect | optional).items():
        if name not in entry.group:
            if name not in optional:
                problems.append(Problem(f"{name}: missing", anew))
        elif tuple(entry.group[name].shape) != shape:
            problems.append(Problem(f"{name}: shape {entry.group[name].shape} != {shape}", anew))
    if problems:
        return problems
    done, _ = read_done(entry.done, "done")
    codes, _ = features_codes(entry)
    if lost is not None:
        done = np.where(lost & (done == PENDING), codes, done)
    orphans = int(((done == PENDING) & (codes != PENDING)).sum())
    if orphans:  # no damaged chunk: not repaired, and the extract writes nothing for them
        problems.append(
            Problem(
                f"done: {orphans} samples pending that its features record as written (the "
                "extract resumes from the features' done: it writes nothing for them)",
                anew,
            )
        )
    c = _counts(done)
    texts: list[str] = []  # problems that resuming the extract fixes
    if c["pending"] > orphans:
        resumed = c["pending"] - orphans
        texts.append(f"{resumed} of {n} samples not written (resume with the same extract)")
    attrs = entry.attrs
    if attrs.get("complete") and c["pending"]:
        texts.append("attributes say complete but samples are pending")
    if "written" in attrs and attrs["written"] != c["written"]:
        texts.append(f"attributes count {attrs['written']} written, arrays have {c['written']}")
    if attrs.get("num_skipped", 0) != c["skipped"]:
        texts.append(
            f"attributes list {attrs.get('num_skipped', 0)} skipped, done has {c['skipped']}"
        )
    problems += [Problem(t) for t in texts]
    labels = entry.labels[:]
    k = int(attrs.get("num_classes", 0))
    ok = done == WRITTEN
    if k and ((labels[ok] < 0) | (labels[ok] >= k)).any():
        problems.append(Problem(f"labels outside [0, {k})", anew))
    for fid in entry.feature_ids():
        g = entry.features(fid)
        problems += _verify_group(g, entry, done, "tokens", f"features/{fid}")
    for lid in entry.latent_ids():
        g = entry.latents(lid)
        problems += _verify_group(g, entry, done, None, f"latents/{lid}")
    for kind in ("triplets", "text"):  # the groups `_groups` scans for damaged chunks
        for gid in entry.complete_groups(kind, REQUIRED.get(kind, ("done",))):
            g = ArrayGroup(entry.group[kind][gid])
            problems += _verify_group(g, entry, done, None, f"{kind}/{gid}")
    problems += [_incomplete_problem(entry, name) for name in entry.incomplete_groups()]
    for name in entry.incomplete_groups("damaged"):
        kind, _, gid = name.partition("/")
        problems.append(damaged_problem(entry.group[kind], gid, name))
    return problems


def _incomplete_problem(entry: DatasetEntry, name: str) -> Problem:
    """An interrupted creation (the rerun makes the group anew), or a group that lacks arrays
    but holds written samples (its ``done`` lost): the rerun refuses to discard that one."""
    kind, _, gid = name.partition("/")
    if not holds_samples(entry.group[kind][gid]):
        return Problem(f"{name}: incomplete (its creation was interrupted; rerun the command)")
    return Problem(
        f"{name}: lacks some of its arrays but holds written samples (lost, or made by another "
        "version?)",
        rewrite(entry, name),
    )


def damaged_problem(parent: zarr.Group, name: str, label: str) -> Problem:
    """The lasting problem of a group whose ``zarr.json`` cannot be read (``--repair`` does not
    rewrite metadata: it may describe written data)."""
    where = damaged_where(parent, name)
    return Problem(
        f"{label}: damaged metadata: {where}",
        "restore the damaged zarr.json from a copy of the cache, or remove the group with "
        "`repackctl cache rm` and make it again",
    )


def _verify_group(
    g: ArrayGroup, entry: DatasetEntry, img_done: np.ndarray, main: str | None, path: str
) -> list[Problem]:
    """Problems of the group at ``path``, each prefixed with that path."""
    problems: list[Problem] = []
    fdone, _ = read_done(g.done, "done")
    c = _counts(fdone)
    if c["pending"]:
        # with the command that writes them (it resumes): a repair killed before it printed
        # them left only this line to go by. Not a lasting problem (``fix``): the rerun fixes it
        text = f"{path}: {c['pending']} samples pending ({producer(entry, path)} writes them)"
        problems.append(Problem(text))
    if ((fdone == WRITTEN) & (img_done != WRITTEN)).any():
        problems.append(Problem(f"{path}: samples written here whose images are not written"))
    attrs = g.attrs
    if main == "tokens":
        t = g["tokens"]
        want = (entry.n, attrs.get("flips"), attrs.get("tokens"), attrs.get("dim"))
        if tuple(t.shape) != want:
            text = f"{path}: tokens shape {tuple(t.shape)} != attributes {want}"
            problems.append(Problem(text, rewrite(entry, path)))
        enc = attrs.get("encoder", {})
        if enc and (enc.get("grid", 0) ** 2 != t.shape[2] or enc.get("dim") != t.shape[3]):
            text = f"{path}: tokens do not match the encoder spec (grid/dim)"
            problems.append(Problem(text, rewrite(entry, path)))
    if path.startswith("latents/") and not c["pending"]:
        problems += _stats_problems(g, entry, fdone, path)
    for name, arr in g.group.arrays():
        if name == "done" or arr.dtype.kind != "f":
            continue
        if name in TEXT_NULL_ARRAYS:  # one value for the whole group, not sample-indexed
            bad = _scan_finite(arr, np.ones(arr.shape[0], np.uint8), arr.shape[0])
            if bad:
                problems.append(Problem(f"{path}: {name}: NaN/inf", _nonfinite_fix(entry, path)))
            continue
        bad = _scan_finite(arr, fdone, entry.shard)
        if bad:
            text = f"{path}: {name}: {bad} samples with NaN/inf"
            problems.append(Problem(text, _nonfinite_fix(entry, path)))
    return problems


def stats_unwritten(entry: DatasetEntry, path: str) -> str:
    """What `cache verify` and `cache ls` say of the latents group at ``path`` whose rows are
    all done but whose channel stats are not written (``unwritten_stats``)."""
    return (
        f"unfinished: every row is written, its channel stats are not (its pack encode was "
        f"stopped before it wrote them); {producer(entry, path)} writes them"
    )


def unwritten_stats(entry: DatasetEntry, lid: str) -> bool:
    """Whether the latents group ``lid`` has every row done but no channel stats: its
    `pack encode` was killed between its last row and ``_finish``. Listed as it was (no pending
    row), it looked finished; only `train dit` refused it. The caller makes sure no writer
    holds the entry (``writer_active``): a live pack encode is writing them then."""
    g = entry.latents(lid)
    if g.attrs.get("stats") is not None or "partial_sum" not in g.group or "mean" not in g.group:
        return False
    done, _ = read_done(g.done, f"latents/{lid}/done")
    return not (done == PENDING).any()


def writer_active(entry: DatasetEntry) -> bool:
    """Whether a writer (``creation.entry_writer``) holds ``entry`` now (never on a URL store:
    no locks there). Tested by taking the entry's lock exclusively for an instant, which a
    writer starting meanwhile waits out (``entry_writer``)."""
    with writers_out(entry_folder(entry.root, entry.name)) as held:
        return not held


def _stats_problems(
    g: ArrayGroup, entry: DatasetEntry, done: np.ndarray, path: str
) -> list[Problem]:
    """The channel stats in the attributes of a finished latents group against the per-shard
    sums they are computed from (what `train dit` checks before it normalises with them): a
    lasting problem when they differ (``--repair`` leaves attributes as they are). When the sums
    are those of the stored latents, the producer writes the stats again from them; when not
    (a sum changed after the stats were written), the group is written anew."""
    recorded = g.attrs.get("stats")
    if "partial_sum" not in g.group or "mean" not in g.group:
        return []  # made before the sums
    if recorded is None:  # verify reads no entry a writer holds: its producer was killed
        return [Problem(f"{path}: {stats_unwritten(entry, path)}")]
    if partials_damage(g, entry, done):
        return []  # reported with the damaged chunks; the repair and the rerun rewrite them
    try:
        exact = combine_partials(g)
    except CacheError:  # no valid row: nothing to normalise
        return []
    if stats_match(recorded, exact):
        return []
    off = shards_off_data(g, entry, done)
    what = f"{path}: the channel stats in its attributes differ from its per-shard sums"
    if not off:
        fix = f"{producer(entry, path)} writes them again from the sums (they match the latents)"
        text = f"{what} (attributes edited or damaged; `train dit` refuses them)"
        return [Problem(text, f"`--repair` leaves attributes as they are: {fix}")]
    rows = shard_rows(entry, off)
    text = f"{what}, and the sums of rows {rows} are not those of the stored latents"
    return [Problem(text, f"`--repair` leaves them as they are: {rewrite(entry, path)}")]


def leftovers(entry: DatasetEntry) -> list[Path]:
    """The temporaries that killed zarr writes left in ``entry`` (``ownership.partial_leftovers``;
    none on a URL store). The caller keeps writers out (``writers_kept_out``)."""
    folder = entry_folder(entry.root, entry.name)
    return [] if folder is None or not folder.is_dir() else partial_leftovers(folder)


def leftovers_problem(entry: DatasetEntry, found: list[Path]) -> Problem | None:
    """`cache verify`'s line for ``found`` (``leftovers``), or None when there are none: each
    held a whole chunk that the rerun wrote anew under another name, counted in the entry's
    size; nothing deleted them before."""
    if not found:
        return None
    size = sum(p.stat().st_size for p in found if p.is_file())
    folder = entry_folder(entry.root, entry.name)
    first = found[0].relative_to(folder) if folder is not None else found[0]
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return Problem(
        f"{len(found)} temporary file(s) of killed writes ({size / 1e6:.1f} MB), e.g. "
        f"{first}{more} (`--repair` deletes them, as does the next extract, pack encode, "
        "captions or refine that writes the entry)"
    )


def sweep_leftovers(entry: DatasetEntry, found: list[Path]) -> list[Path]:
    """Delete ``found`` (``leftovers(entry)``, listed under the same hold of the entry against
    writers: a repair); returns what was deleted."""
    folder = entry_folder(entry.root, entry.name)
    return [] if folder is None else sweep_partials(folder, found)


@contextlib.contextmanager
def writers_kept_out(root: str, name: str, hold: bool) -> Iterator[Problem | None]:
    """Whether `cache verify` may read entry ``name``: a ``Problem`` when a writer (extract,
    captions, pack encode, refiner triplets) is in it now, else None. With ``hold`` (a repair)
    also a ``Problem`` when a reader (a training) is in it, and the entry stays locked against
    writers and new readers until the block ends: a repair marks rows pending, which a writer
    must not set done meanwhile nor a training find missing. Without, a writer may start while
    the check reads."""
    command = f"repackctl cache verify {name}{' --repair' if hold else ''}"
    again = f"run `{command}` again when it has finished"
    with contextlib.ExitStack() as stack:
        folder = entry_folder(root, name)
        held = stack.enter_context(writers_out(folder))
        unread = stack.enter_context(readers_out(folder)) if hold and held else True
        if not hold:
            stack.close()
        if not held:
            yield Problem(
                "being written by another process (extract, captions, pack encode or refine): "
                "not checked",
                again,
            )
        elif not unread:
            yield Problem(
                "being read by another process (a training, sampling or evaluate reading its "
                "rows): neither checked nor repaired",
                again,
            )
        else:
            yield None


# ---- chunk integrity (missing / truncated / corrupt) and repair ---------------------------------
def _groups(entry: DatasetEntry) -> Iterator[tuple[str, zarr.Group]]:
    """(path inside the entry, group) of the entry itself and its complete sub-groups."""
    yield "", entry.group
    for kind in ("features", "latents", "triplets", "text"):
        for name in entry.complete_groups(kind, REQUIRED.get(kind, ("done",))):
            yield f"{kind}/{name}", entry.group[kind][name]


@metadata_unchecked()  # chunk by chunk; `verify_entry` names an array without its checksum codec
def scan_chunks(entry: DatasetEntry) -> list[tuple[str, Damage]]:
    """Every missing, truncated or corrupt chunk holding done rows, with its group's path.

    Rows are sample rows; a shard-indexed array (``partial_*``) reports the rows of its shard;
    a text group's null caption (``null_*``, not sample-indexed) reports no rows: ``repair_rows``
    removes its damaged chunk and `repackctl captions` rewrites it.
    """
    n, shard = entry.n, entry.shard
    found: list[tuple[str, Damage]] = []
    for path, group in _groups(entry):
        prefix = f"{path}/" if path else ""
        done, bad = read_done(group["done"], f"{prefix}done")
        found += [(path, d) for d in bad]
        if not path:  # a lost chunk of it reads as pending rows, which no extract writes again
            found += [("", d) for d in _lost_done(entry, bad)]
        written = done == WRITTEN
        per_shard = np.array([written[s : s + shard].any() for s in range(0, n, shard)])
        for name, arr in group.arrays():
            if name == "done":
                continue
            if name in TEXT_NULL_ARRAYS:  # the group's null caption: every chunk is needed
                whole = scan_array(arr, np.ones(arr.shape[0], bool), prefix + name)
                found += [(path, Damage(d.array, d.key, d.kind, 0, 0)) for d in whole]
            elif arr.shape[0] == n:
                found += [(path, d) for d in scan_array(arr, written, prefix + name)]
            elif arr.shape[0] == len(per_shard):  # one row per shard (partial stats)
                for d in scan_array(arr, per_shard, prefix + name):
                    lo, hi = d.lo * shard, min(d.hi * shard, n)
                    found.append((path, Damage(d.array, d.key, d.kind, lo, hi)))
    return found


def features_codes(entry: DatasetEntry) -> tuple[np.ndarray, np.ndarray]:
    """(per row, the code that the entry's features groups record for its image, PENDING where
    none does; rows where two groups record different codes). An extract marks a row in its
    features' ``done`` only after the entry's own (``extract._ShardWriter._write``), with the
    same code, so these are what the entry's ``done`` held; unreadable chunks count as pending
    (`cache verify` reports them)."""
    codes = np.zeros(entry.n, np.uint8)
    clash = np.zeros(entry.n, bool)
    for fid in entry.feature_ids():
        fdone, _ = read_done(entry.features(fid).done, f"features/{fid}/done")
        known = fdone != PENDING
        clash |= known & (codes != PENDING) & (codes != fdone)
        codes = np.where(known & (codes == PENDING), fdone, codes)
    return codes, clash


def orphan_rows(entry: DatasetEntry) -> np.ndarray:
    """Rows pending in the entry's ``done`` that its features record as written or skipped (a
    lost ``done`` chunk): the extract resumes from its features' ``done`` and never writes
    them, so `cache verify --repair` must (:func:`restore_done`)."""
    done, _ = read_done(entry.done, "done")
    codes, _ = features_codes(entry)
    return (done == PENDING) & (codes != PENDING)


def _lost_done(entry: DatasetEntry, bad: list[Damage]) -> list[Damage]:
    """Missing chunks of the entry's ``done`` that hold rows its features record (``bad``: the
    chunks of it found unreadable already). They read as pending, and no extract writes those
    rows again: it resumes from its features' ``done`` (:func:`orphan_rows`)."""
    codes, _ = features_codes(entry)
    seen = {d.key for d in bad}
    found = scan_array(entry.done, codes != PENDING, "done")
    return [d for d in found if d.kind == "missing" and d.key not in seen]


def restore_done(entry: DatasetEntry, d: Damage) -> bool:
    """Write the rows of the entry's damaged ``done`` chunk ``d`` again from what its features
    record (:func:`features_codes`), keeping the rows still readable; True when done.

    Only where that is exact: no two features groups disagree on a row, and the chunks of the
    entry's own arrays (images, labels, keys, fingerprints) holding the rows restored as
    written are all there and pass their checksums; otherwise False, and ``repair_rows`` marks
    the rows pending (the extract decodes and writes them again). Restoring keeps images whose
    source files may be gone or changed since, which marking them pending would lose.
    """
    lo, hi = d.lo, d.hi
    codes, clash = features_codes(entry)
    now, _ = read_done(entry.done, "done")
    now = now[lo:hi] if d.kind == "missing" else np.zeros(hi - lo, np.uint8)  # corrupt: none
    back = (now == PENDING) & (codes[lo:hi] != PENDING)
    if not back.any() or clash[lo:hi][back].any():
        return False
    rows = np.zeros(entry.n, bool)
    rows[lo:hi] = back & (codes[lo:hi] == WRITTEN)
    for name in ("images", "labels", "keys", FINGERPRINTS):
        if name in entry.group and scan_array(entry.group[name], rows, name):
            return False
    entry.done[lo:hi] = np.where(back, codes[lo:hi], now).astype(np.uint8)
    return True


def repair_rows(entry: DatasetEntry, found: list[tuple[str, Damage]]) -> int:
    """Mark the shards holding damaged rows pending (``done = 0``); returns how many rows were
    marked (each once, however many of its arrays were damaged).

    A truncated or corrupt chunk file is removed (it cannot be read, and zarr reads a shard
    before rewriting part of it); a corrupt ``done`` chunk is overwritten with pending.

    Damage in the entry's own arrays (images, labels, keys) also marks every features group's
    rows pending, because ``extract`` recomputes a shard only where its features are pending.
    A lost or corrupt chunk of the entry's ``done`` is first written again from what its
    features record (:func:`restore_done`) where that is exact; its rows are not marked.

    Order, for a repair killed at any instant: ``complete`` off, the rows pending, and only
    then the unreadable files removed. Removed first, a kill left done rows whose chunk is
    missing, which the extract named by the verify took as written (it wrote nothing). Killed
    after the marking, the rows are pending and their writers rewrite every chunk of them
    whole (shard-aligned writes: zarr reads nothing of the bad file), or a second repair ends it.
    """
    shard, n = entry.shard, entry.n
    marked = np.zeros(n, bool)  # each row once, however many of its arrays were damaged
    store, base = entry.group.store_path.store, entry.group.store_path.path
    restored = [(p, d) for p, d in found if not p and d.array == "done" and restore_done(entry, d)]
    todo = [(p, d) for p, d in found if (p, d) not in restored]
    for path in {p for p, _ in found} - {""}:
        entry.group[path].attrs["complete"] = False
    if any(not p for p, _ in todo):
        entry.group.attrs["complete"] = False
    for path, d in todo:
        lo = d.lo // shard * shard
        hi = min(-(-d.hi // shard) * shard, n)
        targets = [entry.group["done"]] if not path else [entry.group[path]["done"]]
        if not path:
            targets += [entry.features(f).done for f in entry.feature_ids()]
        for done in targets:
            done[lo:hi] = np.zeros(hi - lo, np.uint8)
        marked[lo:hi] = True
    for _, d in todo:
        if d.kind != "missing" and not d.array.endswith("done"):
            # unreadable bytes: zarr reads a shard before rewriting part of it, so they go
            sync(store.delete(f"{base}/{d.array}/{d.key}"))
    return int(marked.sum())


def producer(entry: DatasetEntry, path: str) -> str:
    """The command that (re)writes the group at ``path`` of ``entry``."""
    if path.startswith("latents/"):
        return latents_producer(entry.group[path].attrs, entry=entry.name)
    if path.startswith("triplets/"):
        return triplets_command(entry.group[path].attrs, entry.name)
    if path.startswith("text/"):
        return captions_command(entry.name, entry.group[path].attrs)
    if path.startswith("features/"):
        return f"`{features_extract_command(entry, path.partition('/')[2])}`"
    # the entry's own arrays: every features group's extract rewrites them (each its rows)
    cmds = [f"`{features_extract_command(entry, fid)}`" for fid in _feature_groups(entry)]
    return " and ".join(cmds) or "the same `repackctl extract`"


def triplets_command(attrs: Mapping[str, Any], entry: str) -> str:
    """The command that writes (finishes) the refiner triplets whose group attributes are
    ``attrs`` in cache entry ``entry``: `refine train` of the refiner run that builds them.

    "The same `repackctl refine train`", run as written, started a new default run: one with
    no --name trains refine-<newest pack run>, with noise 0 and seed 0, which builds (or finds)
    another triplets group and leaves these pending. The group does not record which refiner
    run builds it, so the name is a placeholder; the flags that pick this group (its pack run,
    entry, noise σ and the seed of that noise) come from the attributes: a run killed while it
    built its first triplets stored no settings yet, and its name alone starts it afresh with
    the defaults. Each of these equals what a stored run resumes with, so it changes nothing."""
    pack_run = pack_run_of(attrs)
    flags = ["--pack-run", pack_run] if pack_run else []
    flags += ["--entry", entry]
    noise = float(attrs.get("noise") or 0)
    if noise > 0:
        flags += ["--noise", repr(noise)]
        if attrs.get("seed") is not None:
            flags += ["--seed", str(attrs["seed"])]
    cmd = f"repackctl refine train --name RUN {shlex.join(flags)}"
    default = f"refine-{pack_run}" if pack_run else "refine-<pack run>"
    return f"`{cmd}` (RUN: the refiner run that was building them, by default {default})"


def pack_run_of(attrs: Mapping[str, Any]) -> str | None:
    """The pack run named by the ``pack_id`` of triplets attributes ``attrs``
    (``<features>--<run>-<step:07d>-<sha[:8]>``, ``pack.load.pack_id_for``); None when the id
    does not have that form."""
    pack_id, features = attrs.get("pack_id"), attrs.get("features")
    if not isinstance(pack_id, str) or not isinstance(features, str):
        return None
    found = re.fullmatch(rf"{re.escape(features)}--(.+)-\d{{7}}-[0-9a-f]{{8}}", pack_id)
    return found.group(1) if found else None


def _feature_groups(entry: DatasetEntry) -> list[str]:
    """Every features group of ``entry``, complete or not (a repair marks them incomplete), but
    one whose metadata cannot be read (its extract command is not known; verify names it)."""
    if "features" not in entry.group:
        return []
    parent = entry.group["features"]
    return [n for n in child_groups(parent) if damaged_child(parent, n) is None]


def producers(entry: DatasetEntry, found: list[tuple[str, Damage]]) -> list[str]:
    """The commands to rerun after ``repair_rows``, in pipeline order, each once."""
    paths = sorted(
        {p for p, _ in found},
        key=lambda p: (
            ("", "features", "latents").index(p.split("/")[0])
            if p.split("/")[0] in ("", "features", "latents")
            else 3
        ),
    )
    out: list[str] = []
    for p in paths:
        cmd = producer(entry, p)
        if cmd not in out:
            out.append(cmd)
    return out
