"""Refusing a cache entry of a run's training entry name that holds other images.

An entry is opened by name under the cache root given now, so a cache that was moved, copied or
extracted again (another ``--seed``, another folder) can hold other images under the name a run
was trained on. A run records the cache root and entry it read and, where it can, the entry's
``source`` attributes (what ``extract`` made it from: seed, folder, subset, version). Before a
stage reads the entry again for such a run (``pack encode``, ``refine train`` new or resumed), the
attributes here are compared with the recorded ones, not the paths: a moved or copied cache is
accepted, another entry under the same name is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError, RepackError
from repackctl.paths import cache_root, is_url


@dataclass(frozen=True)
class TrainedOn:
    """What a run recorded about the entry it was trained on (see the module docstring)."""

    run: str  # how an error names the run: "pack run p", "refiner run rf"
    entry: str  # the entry's name
    root: str  # the cache root it recorded (a run before absolute roots: as typed)
    source: Any = None  # the entry's ``source`` attributes as recorded (None: not recorded)
    where: str = ""  # where ``source`` was recorded (named by the error)
    # the second way out, after "pass the --cache the run was trained on"; ``{root}`` is the
    # cache root given now
    hint: str = ""


def pack_trained_on(handle: Any, stats_file: Path) -> TrainedOn:
    """The ``TrainedOn`` of a pack model (a ``pack.load.PackHandle``): the entry's source from
    its ``latent_stats.json`` (``stats_file``; an earlier ``pack encode`` of the training entry
    records it), else only where its cache lay."""
    stats = handle.latent_stats or {}
    cache = handle.extra["cache"]
    source = stats.get("source") if isinstance(stats.get("source"), dict) else None
    return TrainedOn(
        run=f"pack run {handle.run_name}",
        entry=str(cache["entry"]),
        root=str(cache.get("root") or ""),
        source=source,
        where=str(stats_file),
        hint="train a pack model on this data: `repackctl pack train --cache {root} "
        "--name NEW-RUN`",
    )


def _recorded_source(trained: TrainedOn, entry: DatasetEntry) -> tuple[Any, str] | None:
    """The source the run recorded and where; else that of the entry at the cache root it
    recorded, when that root is another one than ``entry``'s and still holds it; None when
    neither is available (a moved cache of a run that recorded no source)."""
    if trained.source is not None:
        return trained.source, trained.where
    root = trained.root
    if not root or cache_root(root) == cache_root(entry.root):
        return None
    if not is_url(root) and not (Path(root) / "zarr.json").is_file():
        return None
    try:
        other = DatasetEntry.open(root, trained.entry)
    except (RepackError, OSError, ValueError):
        return None
    return other.attrs.get("source"), f"{cache_root(root)}/{other.name}"


def check_trained_data(entry: DatasetEntry, trained: TrainedOn) -> None:
    """Refuse ``entry`` when it has the name of the entry the run was trained on but other
    ``source`` attributes than the run recorded (another seed, another folder): a cache error
    naming each attribute that differs, where it was recorded, and the ways out."""
    if entry.name != trained.entry:
        return
    found = _recorded_source(trained, entry)
    if found is None:
        return
    recorded, where = found
    here = entry.attrs.get("source")
    if here == recorded:
        return
    if isinstance(here, dict) and isinstance(recorded, dict):
        keys = sorted(k for k in here.keys() | recorded.keys() if here.get(k) != recorded.get(k))
        diff = ", ".join(f"{k} {here.get(k)!r} here, {recorded.get(k)!r} there" for k in keys)
    else:
        diff = f"{here!r} here, {recorded!r} there"
    root = cache_root(entry.root)
    raise CacheError(
        f"cache entry {entry.name} in {root} holds other data than {trained.run} was trained "
        f"on (recorded in {where}): {diff}",
        "pass the --cache the run was trained on"
        + (f", or {trained.hint.format(root=root)}" if trained.hint else ""),
    )
