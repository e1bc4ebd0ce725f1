"""Refiner training triplets in the cache: (real image, reconstruction, raw packed latent).

The official refiner (guanfangdong/RePack-then-Refine ``stage3/prepare_offline_data.py``) wrote
three files per ImageNet image (a ground-truth PNG, the stage-1 reconstruction PNG from the
posterior mean, and the raw latent as a ``.pt``): millions of small files, one process per
GPU. Here they are one Zarr group of the cache entry that already holds the real images::

    <entry>/triplets/<pack-id>[--noise<σ>[--seed<s>]]/
        latent  float32 (N, F, d, h, w)   the raw latent that was decoded
        recon   uint8   (N, F, R, R, 3)   its decoding, quantised like a sampled PNG
        done    uint8   (N,)              1 written, ≥ 2 skipped input (copied from the entry)

F is the number of flips the features hold: flip f pairs with the mirrored real image. The real
image is not copied (``<entry>/images``).

The latent is the posterior mean of the cached tokens, computed from the tokens through the pack
model's projection (no packed-latent group needed), and stays *raw* (never normalised): the
refiner sees raw latents at training and at sampling time (``refine.apply``). With
``noise = σ > 0`` the latent becomes ``mean + σ·ε`` before decoding (ε from a generator seeded
by (seed, index, flip); a second seed at one σ gets its own ``--seed<s>`` group), which makes
the reconstructions look more like decodings of generated latents than of clean posterior means.

Writers own whole shards (``cache.store.owned_ranges``; zarr loses data when two processes write
one shard) and mark a shard done only after its arrays are written, so a killed build resumes
with the first unfinished shard (the same scheme as ``repackctl.extract``). The group records the
torch and repackctl versions it was created under (``cache.versions``): a resume under others,
which would add reconstructions of another implementation, is refused before it writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from repackctl.cache.creation import entry_writer
from repackctl.cache.store import PENDING, WRITTEN, ArrayGroup, DatasetEntry, owned_ranges
from repackctl.cache.verify import triplets_command
from repackctl.cache.versions import BASE_PACKAGES, versions_now
from repackctl.crash import crash_point
from repackctl.errors import CacheError
from repackctl.progress import ProgressBar, ProgressFactory, null_progress
from repackctl.runtime import DistInfo

if TYPE_CHECKING:
    import zarr

    from repackctl.pack.autoencoder import PackAutoencoder
    from repackctl.pack.load import PackHandle

KIND = "triplets"
TRIPLET_ARRAYS = ("latent", "recon", "done")


@dataclass
class TripletResult:
    """Where the triplets are and how many were written now."""

    entry: str
    group: str
    n: int
    written: int
    already_done: int
    seconds: float


# crash tests only (``repackctl.crash.crash_point``): exit as a kill would once the shard that
# starts at row i is written but not yet marked done (``triplets-written-<i>``)
CRASH_BEFORE_DONE = "triplets-written-"


def triplet_group_name(pack_id: str, noise: float, seed: int | None = None) -> str:
    """``<pack-id>`` or ``<pack-id>--noise<σ>``: different σ never share a group; with ``seed``
    (noisy triplets only) ``<pack-id>--noise<σ>--seed<s>``, see :func:`noisy_group_name`."""
    if noise == 0:
        return pack_id
    return f"{pack_id}--noise{noise:g}" + ("" if seed is None else f"--seed{seed}")


def noisy_group_name(entry: DatasetEntry, pack_id: str, noise: float, seed: int | None) -> str:
    """The group of the triplets of ``pack_id`` at noise σ ``noise`` drawn with ``seed`` (the
    noise ε depends on it): ``<pack-id>--noise<σ>`` unless that group holds another seed's
    noise, then ``…--seed<s>``. One group per σ refused a second refiner run of another
    ``--seed`` ("made with other settings") and told to remove the first run's triplets.
    ``seed`` None: the plain name (noise 0 has no seed)."""
    plain = triplet_group_name(pack_id, noise)
    if noise == 0 or seed is None or KIND not in entry.group:
        return plain
    kind = entry.group[KIND]
    if plain not in kind or kind[plain].attrs.get("seed") in (None, seed):
        return plain
    return triplet_group_name(pack_id, noise, seed)


def _noise(seed: int, index: int, flip: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(
        int(np.random.SeedSequence([seed & 0xFFFFFFFF, index, flip, 0x7217]).generate_state(1)[0])
    )
    return torch.randn(shape, generator=g)  # (d, h, w)


def open_triplets(
    entry: DatasetEntry, pack_id: str, noise: float, seed: int | None = None
) -> ArrayGroup:
    """The finished triplet group of ``pack_id`` (raises with the command that builds it);
    ``seed``: the seed of noisy triplets (:func:`noisy_group_name`; None: the plain name)."""
    name = noisy_group_name(entry, pack_id, noise, seed)
    if name not in entry.complete_groups(KIND, TRIPLET_ARRAYS):
        raise CacheError(
            f"no refiner triplets {name!r} in {entry.name}",
            "`repackctl refine train --pack-run RUN` builds them first",
        )
    grp = ArrayGroup(entry.group[KIND][name])
    if (grp.done_mask() == PENDING).any():
        # the refiner run that builds them, by name and with this group's settings, as `cache
        # verify` names it: `refine train` as written started a new default run
        raise CacheError(
            f"refiner triplets {name} in {entry.name} are unfinished",
            f"{triplets_command(grp.attrs, entry.name)} finishes them",
        )
    return grp


def _open_triplets(
    entry: DatasetEntry,
    features_id: str,
    pack: PackHandle,
    shapes: tuple[int, int, int],
    noise: float,
    seed: int,
    dist: DistInfo,
) -> tuple[ArrayGroup, str]:
    """Create (rank 0, first) or open the triplet group; ``shapes`` is (flips, d, grid).
    Returns the group and its name (:func:`claim_triplet_group`: rank 0's, on every process)."""
    flips, d, grid = shapes
    res = entry.resolution
    attrs = {
        "pack_id": pack.pack_id,
        "features": features_id,
        "noise": noise,
        "seed": seed if noise > 0 else None,
        "latent": "posterior mean" + (" + noise·ε" if noise > 0 else ""),
        "latent_convention": "raw",
        "flips": int(flips),
    }

    def build(group: zarr.Group) -> None:  # every array exists before the group counts as created
        entry.add_sample_array(group, "latent", (flips, d, grid, grid), "float32")
        entry.add_sample_array(group, "recon", (flips, res, res, 3), "uint8")
        # informational only: pack_id (run, step, weights hash) is what identifies the
        # model, so a moved runs folder still reuses these triplets
        group.attrs["pack_checkpoint"] = str(pack.checkpoint)

    claimed: list[str] = []
    if dist.rank == 0:
        grp, name = claim_triplet_group(entry, pack.pack_id, noise, seed, attrs, build)
        claimed = [name]
    # every process writes into the group rank 0 claimed, once it is created
    (name,) = dist.all_items(claimed)
    if dist.rank != 0:
        grp, _ = entry.create_or_open_group(
            KIND, name, attrs, build, TRIPLET_ARRAYS, versions=versions_now(BASE_PACKAGES)
        )
    return grp, name


def claim_triplet_group(
    entry: DatasetEntry,
    pack_id: str,
    noise: float,
    seed: int | None,
    attrs: dict,
    build: Callable[[zarr.Group], None] | None = None,
) -> tuple[ArrayGroup, str]:
    """Create (or open) the triplet group of ``pack_id`` at ``noise`` drawn with ``seed``, with
    the attributes ``attrs`` (``build`` adds its arrays); the group and its name
    (:func:`noisy_group_name`).

    The name is chosen from the groups there are, then the group is created under the cache's
    creation lock: two runs of other seeds started together on a new pack both chose the plain
    name, and the second was refused ("made with other settings (seed: …)"). The creation is the
    claim: one that finds the plain name taken meanwhile by another seed's noise (the group it
    chose now names another seed) takes its own seed's name instead."""
    name = noisy_group_name(entry, pack_id, noise, seed)
    try:
        grp, _ = entry.create_or_open_group(
            KIND, name, attrs, build, TRIPLET_ARRAYS, versions=versions_now(BASE_PACKAGES)
        )
    except CacheError:
        again = noisy_group_name(entry, pack_id, noise, seed)
        if again == name:
            raise  # another difference than a seed that claimed the name first
        name = again
        grp, _ = entry.create_or_open_group(
            KIND, name, attrs, build, TRIPLET_ARRAYS, versions=versions_now(BASE_PACKAGES)
        )
    return grp, name


def _source_codes(entry: DatasetEntry, feats: ArrayGroup, features_id: str) -> np.ndarray:
    """Per-sample codes: WRITTEN where image and features are, else the skip reason."""
    img_done, feat_done = entry.done_mask(), feats.done_mask()
    if (feat_done == PENDING).any() or (img_done == PENDING).any():
        raise CacheError(
            f"features {features_id} in {entry.name} are unfinished",
            "run the same `repackctl extract` again to finish them",
        )
    both = (img_done == WRITTEN) & (feat_done == WRITTEN)
    # a skipped input keeps its skip reason; it gets no triplet
    source_done = np.where(both, WRITTEN, np.maximum(np.maximum(img_done, feat_done), 2))
    return source_done.astype(np.uint8)


@torch.no_grad()
def _encode_decode(
    model: PackAutoencoder,
    t: torch.Tensor,
    grid: int,
    noise: float,
    seed: int,
    lo: int,
    ok: np.ndarray,
    f: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """Posterior-mean latent (+ seeded noise) of tokens ``t`` and its uint8 decoding."""
    from repackctl.files import to_uint8

    z = model.encode(t, (grid, grid)).mode()  # (b, d, h, w)
    if noise > 0:
        shape = tuple(z.shape[1:])
        eps = torch.stack([_noise(seed, lo + int(k), f, shape) for k in np.flatnonzero(ok)]).to(
            z.device
        )  # (b, d, h, w)
        z = z + noise * eps  # (b, d, h, w)
    return z, to_uint8(model.decode(z))  # (b, d, h, w), (b, R, R, 3)


def _shard_triplets(
    rng: range,
    codes: np.ndarray,
    tokens: zarr.Array,
    model: PackAutoencoder,
    shapes: tuple[int, int, int, int],
    noise: float,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    bar: ProgressBar,
) -> tuple[np.ndarray, np.ndarray]:
    """Latents and reconstructions of one shard; ``shapes`` is (flips, d, grid, resolution)."""
    flips, d, grid, res = shapes
    m = len(rng)
    lat = np.zeros((m, flips, d, grid, grid), np.float32)
    rec = np.zeros((m, flips, res, res, 3), np.uint8)
    for start in range(0, m, batch_size):
        lo, hi = rng.start + start, min(rng.start + start + batch_size, rng.stop)
        ok = codes[lo - rng.start : hi - rng.start] == WRITTEN
        if ok.any():
            tok = torch.from_numpy(np.asarray(tokens[lo:hi], np.float32))
            for f in range(flips):
                t = tok[ok, f].to(device)  # (b, T, C)
                z, images = _encode_decode(model, t, grid, noise, seed, lo, ok, f)
                rows = np.flatnonzero(ok) + (lo - rng.start)
                lat[rows, f] = z.float().cpu().numpy()
                rec[rows, f] = images
        bar.advance(hi - lo)
    return lat, rec


def _check_source_precision(
    entry: DatasetEntry, feats: ArrayGroup, pack: PackHandle, noise: float, seed: int
) -> None:
    """Before anything is written: triplets still to build are decoded from features of the
    precision the pack model was trained on (``pack.load.check_features_precision``, as `pack
    encode` refuses): features removed and extracted again in another precision keep their id,
    and their reconstructions came from another input distribution than the model saw. Finished
    triplets read no features and are reused as they are."""
    from repackctl.pack.load import check_features_precision

    try:
        open_triplets(entry, pack.pack_id, noise, seed)
        return  # finished: nothing is decoded from the features now
    except CacheError:
        pass  # missing or unfinished: built from the features there now
    check_features_precision(pack, entry, feats)


def build_triplets(
    entry: DatasetEntry,
    features_id: str,
    pack: PackHandle,
    *,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
) -> TripletResult:
    """Build (or finish building) the triplets of ``pack`` (a ``pack.io.PackHandle``)."""
    dist = dist or DistInfo.from_env()
    feats = entry.features(features_id)
    _check_source_precision(entry, feats, pack, noise, seed)
    n, flips, tokens, dim = feats["tokens"].shape
    model = pack.model.to(device).eval()
    grid = int(round(tokens**0.5))
    d = model.latent_channels
    grp, name = _open_triplets(entry, features_id, pack, (flips, d, grid), noise, seed, dist)
    source_done = _source_codes(entry, feats, features_id)
    mine = owned_ranges(n, entry.shard, dist.rank, dist.world)
    done = grp.done_mask()
    pending = [r for r in mine if (done[r.start : r.stop] == PENDING).any()]
    already = sum(len(r) for r in mine) - sum(len(r) for r in pending)
    written = 0
    shapes = (flips, d, grid, entry.resolution)
    t0 = time.perf_counter()
    total = sum(len(r) for r in pending)
    with progress(f"triplets {name}", total=total, unit="img") as bar, entry_writer(entry.group):
        for rng in pending:
            codes = source_done[rng.start : rng.stop]
            lat, rec = _shard_triplets(
                rng, codes, feats["tokens"], model, shapes, noise, seed, batch_size, device, bar
            )
            sl = slice(rng.start, rng.stop)
            grp["latent"][sl] = lat
            grp["recon"][sl] = rec
            crash_point(f"{CRASH_BEFORE_DONE}{rng.start}")
            grp.done[sl] = codes  # after the data: a done shard is complete
            written += int((codes == WRITTEN).sum())
    seconds = time.perf_counter() - t0
    dist.barrier()
    return TripletResult(entry.name, name, n, written, already, seconds)
