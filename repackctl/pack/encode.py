"""`repackctl pack encode`: cached tokens → packed latents (posterior mean and std) + exact stats.

The official RePack code caches posterior *samples* and estimates the normalisation from 10k
unseeded random samples, not stored with the model (``reference/methods.md``). Here:

* ``latents/<pack-id>/mean`` and ``std``: float16 (N, F, d, h, w) for both flips, chunked and
  sharded like the features; the DiT draws its own samples from them (or uses the mean).
* Work is split like ``repackctl.extract``: each process owns whole shard-aligned sample ranges
  (two zarr writers in one shard lose data), a shard is projected in batches that never cross its
  boundary (so numbers do not depend on the process count), written, and only then marked done.
  A killed process loses at most its current shard; a rerun continues where it stopped.
* Channel statistics of the posterior mean are exact: each shard's per-channel sum and sum of
  squares (float64, over its valid samples, both flips and all positions, from the stored float16
  values) go into a small per-shard array; after all shards are done, rank 0 adds them up in shard
  order. The result is deterministic and bit-identical for any number of processes and
  any resume pattern. std is the population std (ddof 0): sqrt(E[z²] − E[z]²).
* The stats go to the group attributes (``stats``: mean, std, count) and, for the split the pack
  model was trained on, to ``<checkpoint>/latent_stats.json`` (atomic write, sealed with its
  sha256: ``state.json``'s checksums do not cover it), so every consumer normalises with the
  same numbers. A damaged one is no reason to refuse: encoding the training split writes it
  again (every other reader refuses it, naming this command).
* Tokens are read through ``GuardedArray``: a lost or corrupt chunk holding written rows stops the
  run with the repair command instead of encoding zeros. The stats record the entry's source
  description, and an entry of the training entry's name holding other data (another seed, found
  in another ``--cache``) is refused before anything is written
  (``cache.trained.check_trained_data``, shared with ``refine train``).
* The group records the torch and repackctl versions it was created under (``package_versions``);
  a resume under other versions, which would add rows of another implementation, is refused
  before anything is written (``cache.versions``); a finished group is read whatever is installed.

Legend: N samples, F flips, T tokens, C token channels, d latent channels, h×w grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repackctl.cache.commands import remove_command
from repackctl.cache.creation import entry_writer
from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.partials import add_partial_arrays, checked_stats, write_partials
from repackctl.cache.store import (
    PENDING,
    WRITTEN,
    ArrayGroup,
    DatasetEntry,
    features_precision,
    owned_ranges,
    update_changed,
)
from repackctl.cache.trained import check_trained_data, pack_trained_on
from repackctl.cache.versions import BASE_PACKAGES, versions_now
from repackctl.errors import CacheError, ConfigError
from repackctl.pack.data import (
    dataset_name_for,
    features_id_for,
    find_entry,
    open_features,
    recorded_weights,
    sibling_entry,
)
from repackctl.pack.load import (  # re-exported: `pack encode`'s checks read them here
    FEATURES_PRECISION as FEATURES_PRECISION,
)
from repackctl.pack.load import (
    LATENT_STATS,
    LatentStatsError,
    PackHandle,
    load_pack,
    read_latent_stats,
    seal_stats,
)
from repackctl.pack.load import check_features_precision as check_features_precision
from repackctl.paths import cache_root, run_dir
from repackctl.progress import ProgressFactory, null_progress
from repackctl.runs import chained_run
from repackctl.runtime import DistInfo, resolve_device
from repackctl.settings import Settings

if TYPE_CHECKING:
    import zarr

ENCODER_KEYS = ("encoder", "weights", "layer")
SOURCE_KEYS = ("data", "resolution", "num")
LATENT_ARRAYS = ("mean", "std", "partial_sum", "partial_sumsq", "partial_count", "done")


@dataclass
class EncodeResult:
    """What an encoding did, for the CLI to render."""

    entry: str
    pack_id: str
    n: int
    written: int
    already_done: int
    seconds: float
    latent_shape: tuple[int, ...]
    stats: dict[str, Any] | None
    stats_file: Path | None
    checkpoint: Path


def extract_hint(
    handle: PackHandle, split: str | None = None, entry: DatasetEntry | None = None
) -> str:
    """``run `repackctl extract …` first``: the extract that writes the run's features for its
    own data (``split``: another split of it); with ``entry``, for that entry's images instead
    (:func:`_entry_extract`): the run's data named another entry than the one lacking them.

    The hint of every command that finds a pack run's features missing (`pack encode`, and
    `evaluate recon` / `probe` on its held-out or ``--entry`` images), so that each names the
    same extract, with the run's encoder, weights, layer and precision."""
    from repackctl.pack.data import _hint

    source = dict(handle.extra.get("source") or {})
    if not source:
        enc = handle.extra.get("encoder", {})
        source = {"encoder": enc.get("id", "ENCODER"), "data": "DATA", "split": "train"}
    try:  # a relative file of an older run by its absolute path here (pack.data)
        source["weights"] = recorded_weights(handle.extra, handle.run_name)
    except ConfigError:  # one that names no file here: as recorded (a hint only)
        pass
    source.setdefault("weights", None)
    source.setdefault("layer", None)
    source.setdefault("num", None)
    if entry is not None:
        return f"run `{_entry_extract(handle, source, entry)}` first"
    return _hint(source, split)


def _entry_extract(handle: PackHandle, source: dict[str, Any], entry: DatasetEntry) -> str:
    """The extract that writes the run's features (its encoder, weights, layer and features
    precision, from ``source``) for ``entry``'s images: its data, split, resolution, ``-n``,
    held-out fraction and seed (``entry_source``; the seed that drew the weights where the
    entry's images need none)."""
    from repackctl.cache.commands import _weights_flag, entry_source, extract_command

    src = entry_source(entry)
    enc = handle.extra.get("encoder") or {}
    _, drawn = _weights_flag(str(enc.get("weights") or ""))
    precision = handle.extra.get(FEATURES_PRECISION)
    return extract_command(
        source["encoder"],
        src["data"],
        src["split"],
        src["resolution"],
        src["num"],
        source["weights"],
        source["layer"],
        val_fraction=src["val_fraction"],
        precision=str(precision) if precision else None,
        seed=src["seed"] if src["seed"] is not None else drawn,
    )


def target_features(settings: Settings, handle: PackHandle) -> tuple[DatasetEntry, ArrayGroup]:
    """The entry and features to encode: the run's own unless settings name others explicitly.

    Explicit encoder settings (``--encoder``/``--weights``/``--layer``/``--features``) that name
    other features than the pack model was trained on are an error naming both.
    """
    cfg = settings.pack
    given = cfg.model_fields_set
    run_cache = handle.extra["cache"]
    trained_on = run_cache["features"]
    source = dict(handle.extra.get("source") or {})
    if given & {"features", *ENCODER_KEYS}:
        if "features" in given and cfg.features:
            wanted = cfg.features
        else:
            merged = source | {k: getattr(cfg, k) for k in ENCODER_KEYS if k in given}
            if "weights" not in given:  # the run's file, refused where it cannot be read
                merged["weights"] = recorded_weights(handle.extra, handle.run_name)
            merged.setdefault("resolution", handle.extra.get("resolution"))
            wanted, _ = features_id_for(merged, settings.seed)
        if wanted != trained_on:
            raise CacheError(
                f"pack run {handle.run_name} was trained on encoder features {trained_on}, "
                f"but features {wanted} were asked for",
                "encode with the encoder the pack model was made for (drop --encoder/--features), "
                f"or train a pack model on {wanted}: `repackctl pack train --encoder "
                f"{cfg.encoder} --name NEW-RUN`",
            )
    root = settings.cache
    split = cfg.split if "split" in given else source.get("split", "train")
    hint = extract_hint(handle, split)
    if "entry" in given and cfg.entry:
        name = cfg.entry
    elif given & set(SOURCE_KEYS):
        merged = source | {k: getattr(cfg, k) for k in (*SOURCE_KEYS, "split") if k in given}
        if "resolution" not in given:
            merged["resolution"] = handle.extra.get("resolution")
        merged["split"] = split
        dataset = dataset_name_for(merged, settings.seed, settings.imagenet_root)
        name = find_entry(root, dataset, split, merged["resolution"], trained_on, hint)
    elif split != source.get("split", "train"):
        entry, feats = sibling_entry(root, run_cache, source, split)
        return entry, feats
    else:
        name = run_cache["entry"]
    entry, feats, _ = open_features(root, name, trained_on, hint)
    return entry, feats


def _create_group(
    entry: DatasetEntry, handle: PackHandle, feats: ArrayGroup
) -> tuple[ArrayGroup, tuple[int, ...]]:
    """The latents group of this pack id, with its arrays (created once, by rank 0)."""
    n, flips, tokens, _ = feats["tokens"].shape
    side = int(round(tokens**0.5))
    d = handle.latent_channels
    sample_shape = (flips, d, side, side)
    attrs = {
        "pack": {
            "run": handle.run_name,
            "pack_id": handle.pack_id,
            "step": handle.step,
            "which": handle.which,
            "method": handle.extra.get("method"),
        },
        "features": handle.features_id,
        "encoder": handle.extra.get("encoder"),
        "latent_channels": d,
        "grid": [side, side],
        "flips": flips,
        "arrays": "mean, std: float16 (N, F, d, h, w) posterior mean and std",
    }
    shards = -(-entry.n // entry.shard)

    def build(group: zarr.Group) -> None:  # every array exists before the group counts as created
        entry.add_sample_array(group, "mean", sample_shape, "float16")
        entry.add_sample_array(group, "std", sample_shape, "float16")
        add_partial_arrays(group, shards, d)
        # informational only: pack_id (run, step, weights hash) identifies the model, so a
        # moved runs folder still reuses (and resumes) these latents
        group.attrs["pack_checkpoint"] = str(handle.checkpoint)
        group.attrs["created"] = time.time()
        group.attrs[FEATURES_PRECISION] = features_precision(dict(feats.attrs))

    versions = versions_now(BASE_PACKAGES)  # the pack model is torch and repackctl code
    grp, _ = entry.create_or_open_group(
        "latents", handle.pack_id, attrs, build, required=LATENT_ARRAYS, versions=versions
    )
    _check_features_made(entry, grp, feats, handle)
    return grp, sample_shape


def _check_features_made(
    entry: DatasetEntry, grp: ArrayGroup, feats: ArrayGroup, handle: PackHandle
) -> None:
    """Refuse (``CacheError``) to resume or reuse latents encoded from features that are no
    longer there: features removed (`cache rm --features`) and extracted again in another
    precision keep their id, and the rows already done would be kept as "already done", encoded
    from the old features, beside new rows from the new ones. Groups written before the
    precision was recorded are not checked."""
    made = grp.attrs.get(FEATURES_PRECISION)
    now = features_precision(dict(feats.attrs))
    if made is None or made == now:
        return
    lid, fid = grp.group.basename, feats.group.basename
    raise CacheError(
        f"latents/{lid} in {entry.name} were encoded from features {fid} computed in {made}, "
        f"but the features there now were computed in {now} (extracted again since): their "
        "rows would be kept as done",
        f"`{remove_command(entry.name, 'latents', lid, yes=True)}`, then `repackctl pack encode "
        f"--run {handle.run_name} --entry {entry.name}` to encode the features there now",
    )


def guarded_tokens(entry: DatasetEntry, feats: ArrayGroup, codes: np.ndarray) -> GuardedArray:
    """``tokens`` of ``feats`` read so that a missing or corrupt chunk holding written rows
    (``codes == WRITTEN``) is a ``CacheError`` naming the entry, the array and the repair."""
    label = f"{entry.name} features/{feats.group.basename}/tokens"
    redo = repair_hint(entry.name, "the same `repackctl extract`")
    return GuardedArray(feats["tokens"], codes == WRITTEN, label, redo)


@torch.no_grad()
def _encode_shard(
    model: torch.nn.Module,
    tokens: GuardedArray,
    codes: np.ndarray,
    rng: range,
    sample_shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    bar: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (m, F, d, h, w) float16 of one shard; invalid rows stay zero."""
    m = len(rng)
    means = np.zeros((m, *sample_shape), np.float16)
    stds = np.zeros((m, *sample_shape), np.float16)
    flips = sample_shape[0]
    for lo in range(rng.start, rng.stop, batch):
        hi = min(lo + batch, rng.stop)
        local = np.arange(lo - rng.start, hi - rng.start)
        ok = codes[local] == WRITTEN
        if ok.any():
            tok = tokens[lo:hi][ok]  # (b, F, T, C) float16
            b = tok.shape[0]
            x = torch.from_numpy(tok).to(device).float().flatten(0, 1)  # (b·F, T, C)
            post = model.encode(x)
            mean = post.mean.to(torch.float16).reshape(b, flips, *sample_shape[1:])
            std = post.std.to(torch.float16).reshape(b, flips, *sample_shape[1:])
            means[local[ok]] = mean.cpu().numpy()  # (b, F, d, h, w)
            stds[local[ok]] = std.cpu().numpy()
        bar.advance(hi - lo)
    return means, stds


def write_stats_file(path: Path, stats: dict[str, Any]) -> None:
    """``latent_stats.json``, sealed with its sha256 (``seal_stats``: the file is not among
    the checksums of ``state.json``, so a reader tells an edited one), through a temporary file
    and a rename (not again when the file already holds these stats: a rerun that finds
    everything done writes nothing; a damaged one is written again)."""
    from repackctl.files import write_json_atomic

    doc = seal_stats(stats)
    try:
        if json.loads(path.read_text()) == doc:
            return
    except (OSError, ValueError):
        pass  # missing or unreadable: write it
    write_json_atomic(path, doc)


def _own_stats(handle: PackHandle) -> LatentStatsError | None:
    """Read the checkpoint's ``latent_stats.json`` into ``handle`` (``load_pack`` left it out):
    a damaged one is returned, not raised, since encoding the training split writes it again
    (``_finish``); it is left out of the trained-data check, as a missing one is."""
    try:
        handle.latent_stats = read_latent_stats(handle.checkpoint)
    except LatentStatsError as e:
        return e
    return None


def _checked_stats(
    grp: ArrayGroup, entry: DatasetEntry, handle: PackHandle, feats: ArrayGroup, done: np.ndarray
) -> dict[str, Any]:
    """The channel stats from the per-shard sums, refused (``CacheError``) over a lost or corrupt
    sum of a shard holding written rows (read as zeros, the stats, and the model's
    ``latent_stats.json``, would cover the other shards only, silently) and over sums that hold
    NaN/inf (latents from features that are not finite: NaN stats written with exit 0)."""
    from repackctl.cache.verify import nonfinite_rewrite, rewrite

    latents = f"latents/{grp.group.basename}"
    nonfinite = (
        f"`repackctl cache verify {entry.name}` names the NaN/inf rows of the features; "
        f"{nonfinite_rewrite(entry, f'features/{feats.group.basename}')}; then "
        f"{rewrite(entry, latents)}"
    )
    producer = f"`repackctl pack encode --run {handle.run_name}`"
    return checked_stats(grp, entry, done, producer, nonfinite)


def _finish(
    grp: ArrayGroup, entry: DatasetEntry, handle: PackHandle, feats: ArrayGroup
) -> tuple[dict[str, Any] | None, Path | None]:
    """Once every row is done: the latent statistics combined from the shards' partial sums,
    recorded in the group (now complete) and, for the training split, written as the model's
    stats file. ``(stats, stats file)``, or ``(None, None)`` while rows are pending."""
    done = grp.done_mask()
    if (done == PENDING).any():
        return None, None
    stats = _checked_stats(grp, entry, handle, feats, done)
    stats |= {"pack_id": handle.pack_id, "entry": entry.name, "cache": cache_root(entry.root)}
    stats["source"] = entry.attrs.get("source")  # what the data was (cache.trained)
    update_changed(grp.group.attrs, {"stats": stats, "complete": True})
    stats_file = None
    if entry.name == handle.extra["cache"]["entry"]:  # the training split: the model's stats
        stats_file = handle.checkpoint / LATENT_STATS
        write_stats_file(stats_file, stats)
    return stats, stats_file


def run_pack_encode(
    settings: Settings, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
) -> EncodeResult:
    """Encode (or resume encoding) a cache entry with the pack run named by ``settings.pack.run``."""
    from repackctl.pack.task import default_run_name

    cfg = settings.pack
    dist = dist or DistInfo.from_env()
    run = cfg.run or default_run_name(settings)
    if not cfg.run and not run_dir(settings.runs, run).is_dir():
        run = chained_run(settings.runs, "pack", "--run")
    handle = load_pack(run, runs=settings.runs, stats=False)  # a damaged stats file: below
    damaged = _own_stats(handle)
    entry, feats = target_features(settings, handle)
    if damaged is not None and entry.name != handle.extra["cache"]["entry"]:
        raise damaged  # its hint encodes the training split, which writes the file again
    # the training entry's name holding other images than the model's is refused
    check_trained_data(entry, pack_trained_on(handle, handle.checkpoint / LATENT_STATS))
    check_features_precision(handle, entry, feats)
    device = resolve_device(settings.device, dist.local_rank)
    model = handle.model.to(device)

    if dist.rank == 0:
        grp, sample_shape = _create_group(entry, handle, feats)
    dist.barrier()
    if dist.rank != 0:
        entry = DatasetEntry.open(settings.cache, entry.name)
        grp, sample_shape = _create_group(entry, handle, feats)

    ranges = owned_ranges(entry.n, entry.shard, dist.rank, dist.world)
    lat_done = grp.done_mask()
    feat_codes = feats.done_mask()
    tokens = guarded_tokens(entry, feats, feat_codes)
    pending = [r for r in ranges if (lat_done[r.start : r.stop] == PENDING).any()]
    already = sum(len(r) for r in ranges) - sum(len(r) for r in pending)
    todo = sum(len(r) for r in pending)
    written = 0
    t0 = time.perf_counter()
    title = f"pack encode {handle.run_name}"
    with progress(title, total=todo, unit="img") as bar, entry_writer(entry.group):
        if already:
            bar.log(f"resuming: {already} samples of this process were already done")
        for rng in pending:
            codes = feat_codes[rng.start : rng.stop]
            means, stds = _encode_shard(
                model, tokens, codes, rng, sample_shape, cfg.encode_batch_size, device, bar
            )
            valid = codes == WRITTEN
            sl = slice(rng.start, rng.stop)
            grp["mean"][sl] = means
            grp["std"][sl] = stds
            write_partials(grp, rng.start // entry.shard, means, valid)
            grp.done[sl] = codes  # last: the shard counts as done only once all of it is there
            written += int(valid.sum())
    seconds = time.perf_counter() - t0
    dist.barrier()

    stats, stats_file = _finish(grp, entry, handle, feats) if dist.rank == 0 else (None, None)
    dist.barrier()
    if stats is None:
        stats = grp.attrs.get("stats")
    written, already, seconds = dist.job_totals(written, already, seconds)  # not rank 0's share
    return EncodeResult(
        entry=entry.name,
        pack_id=handle.pack_id,
        n=entry.n,
        written=written,
        already_done=already,
        seconds=seconds,
        latent_shape=tuple(grp["mean"].shape),
        stats=stats,
        stats_file=stats_file,
        checkpoint=handle.checkpoint,
    )
