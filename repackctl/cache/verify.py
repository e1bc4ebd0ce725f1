"""Describe and verify cache entries: shapes, done counts, NaN/inf, attributes against arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from repackctl.cache.store import PENDING, WRITTEN, ArrayGroup, DatasetEntry, open_root


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
    incomplete: list[str] = field(default_factory=list)

    def incomplete_of(self, kind: str) -> list[str]:
        """``<name> (incomplete)`` for the interrupted groups of ``kind``."""
        return [f"{g.split('/', 1)[1]} (incomplete)" for g in self.incomplete if g.startswith(kind)]


def _nbytes(group) -> int:
    total = 0
    for _, arr in group.arrays():
        total += int(arr.nbytes_stored())
    for _, sub in group.groups():
        total += _nbytes(sub)
    return total


def _counts(done: np.ndarray) -> dict[str, int]:
    return {
        "written": int((done == WRITTEN).sum()),
        "skipped": int((done >= 2).sum()),
        "pending": int((done == PENDING).sum()),
    }


def describe_entry(entry: DatasetEntry) -> EntryInfo:
    done = entry.done[:]
    info = EntryInfo(
        name=entry.name,
        n=entry.n,
        resolution=entry.resolution,
        classes=int(entry.attrs.get("num_classes", 0)),
        bytes=_nbytes(entry.group),
        incomplete=entry.incomplete_groups(),
        **_counts(done),
    )
    for fid in entry.feature_ids():
        g = entry.features(fid)
        enc = g.attrs.get("encoder", {})
        info.features[fid] = {
            "shape": list(g["tokens"].shape),
            "weights": enc.get("weights"),
            **_counts(g.done_mask()),
        }
    for lid in entry.latent_ids():
        g = entry.latents(lid)
        arrays = {name: list(a.shape) for name, a in g.group.arrays() if name != "done"}
        info.latents[lid] = {"arrays": arrays, **_counts(g.done_mask())}
    return info


def _scan_finite(arr, done: np.ndarray, block: int) -> int:
    """Number of written samples with a NaN/inf, reading chunk-aligned blocks."""
    bad = 0
    for lo in range(0, arr.shape[0], block):
        hi = min(lo + block, arr.shape[0])
        ok = done[lo:hi] == WRITTEN
        if not ok.any():
            continue
        data = np.asarray(arr[lo:hi])[ok].astype(np.float32)
        bad += int((~np.isfinite(data.reshape(len(data), -1))).any(1).sum())
    return bad


def verify_entry(entry: DatasetEntry) -> list[str]:
    """Problems found in ``entry`` (empty list = healthy)."""
    problems: list[str] = []
    n, r = entry.n, entry.resolution
    expect = {"images": (n, r, r, 3), "labels": (n,), "keys": (n,), "done": (n,)}
    for name, shape in expect.items():
        if name not in entry.group:
            problems.append(f"{name}: missing")
        elif tuple(entry.group[name].shape) != shape:
            problems.append(f"{name}: shape {entry.group[name].shape} != {shape}")
    if problems:
        return problems
    done = entry.done[:]
    c = _counts(done)
    if c["pending"]:
        problems.append(f"{c['pending']} of {n} samples not written (resume with the same extract)")
    attrs = entry.attrs
    if attrs.get("complete") and c["pending"]:
        problems.append("attributes say complete but samples are pending")
    if "written" in attrs and attrs["written"] != c["written"]:
        problems.append(f"attributes count {attrs['written']} written, arrays have {c['written']}")
    if attrs.get("num_skipped", 0) != c["skipped"]:
        problems.append(
            f"attributes list {attrs.get('num_skipped', 0)} skipped, done has {c['skipped']}"
        )
    labels = entry.labels[:]
    k = int(attrs.get("num_classes", 0))
    ok = done == WRITTEN
    if k and ((labels[ok] < 0) | (labels[ok] >= k)).any():
        problems.append(f"labels outside [0, {k})")
    for fid in entry.feature_ids():
        g = entry.features(fid)
        problems += [f"features/{fid}: {p}" for p in _verify_group(g, entry, done, "tokens")]
    for lid in entry.latent_ids():
        g = entry.latents(lid)
        problems += [f"latents/{lid}: {p}" for p in _verify_group(g, entry, done, None)]
    for name in entry.incomplete_groups():
        problems.append(f"{name}: incomplete (its creation was interrupted; rerun the command)")
    return problems


def _verify_group(
    g: ArrayGroup, entry: DatasetEntry, img_done: np.ndarray, main: str | None
) -> list[str]:
    problems: list[str] = []
    fdone = g.done_mask()
    c = _counts(fdone)
    if c["pending"]:
        problems.append(f"{c['pending']} samples pending")
    if ((fdone == WRITTEN) & (img_done != WRITTEN)).any():
        problems.append("samples written here whose images are not written")
    attrs = g.attrs
    if main == "tokens":
        t = g["tokens"]
        want = (entry.n, attrs.get("flips"), attrs.get("tokens"), attrs.get("dim"))
        if tuple(t.shape) != want:
            problems.append(f"tokens shape {tuple(t.shape)} != attributes {want}")
        enc = attrs.get("encoder", {})
        if enc and (enc.get("grid", 0) ** 2 != t.shape[2] or enc.get("dim") != t.shape[3]):
            problems.append("tokens do not match the encoder spec (grid/dim)")
    for name, arr in g.group.arrays():
        if name == "done" or arr.dtype.kind != "f":
            continue
        bad = _scan_finite(arr, fdone, entry.shard)
        if bad:
            problems.append(f"{name}: {bad} samples with NaN/inf")
    return problems


def remove(root: str, name: str, sub: str | None = None) -> None:
    """Delete an entry, or one of its feature/latent groups (``features/<id>``)."""
    g = open_root(root, mode="a")
    target = name if sub is None else f"{name}/{sub}"
    parent, _, leaf = target.rpartition("/")
    grp = g[parent] if parent else g
    del grp[leaf]
