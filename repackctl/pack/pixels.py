"""Raw pixels as a "latent": space-to-depth of the image onto the encoder's token grid.

The pixel baseline of the RePack paper's comparison (a DiT on raw pixels patchified to the same
token grid as the packed latents, so that the DiT, its sequence length and its compute are the
same and only the representation differs). A 64 px image with patch 8 becomes an 8×8 grid of
3·8·8 = 192 channels (``F.pixel_unshuffle``), decoded back exactly by depth-to-space
(``F.pixel_shuffle``): the "decoder" of this arm is lossless.

``write_pixel_latents`` stores it in the cache exactly like ``pack encode`` stores packed latents
(``latents/<id>/mean`` float16 (N, F, 3p², h, w) for both flips, ``done``, and exact float64
channel stats over the stored values in the group attributes), so ``train dit --latents
pixels-p8`` trains on it with the same trainer. There is no posterior ``std`` array: pixels are
deterministic (train with ``latent_sampling = "mean"``).

Legend: N samples, F flips, R image side, p patch, h×w = (R/p)×(R/p) grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from repackctl.cache.creation import entry_writer
from repackctl.cache.partials import add_partial_arrays, checked_stats, write_partials
from repackctl.cache.store import (
    PENDING,
    WRITTEN,
    ArrayGroup,
    DatasetEntry,
    owned_ranges,
    update_changed,
)
from repackctl.errors import CacheError, ConfigError
from repackctl.progress import ProgressFactory, null_progress

if TYPE_CHECKING:
    import zarr

METHOD = "pixels"


def pixel_latent_id(patch: int) -> str:
    """Cache id of the pixel latents with this patch size (``pixels-p8``)."""
    return f"{METHOD}-p{int(patch)}"


def _check_patch(resolution: int, patch: int) -> None:
    if patch < 1 or resolution % patch:
        raise ConfigError(
            f"patch {patch} does not tile {resolution} px images",
            "use the encoder's patch size (8 for the built-in encoder) or any divisor of the side",
        )


def images_to_model(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, R, R, 3) → float32 (B, 3, R, R) in [−1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))  # (B, R, R, 3)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, R, R)


def space_to_depth(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, R, R) → (B, 3·p², R/p, R/p): each p×p patch becomes one grid cell's channels."""
    _check_patch(images.shape[-1], patch)
    return F.pixel_unshuffle(images, patch)  # (B, 3p², h, w)


def depth_to_space(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of ``space_to_depth``: (B, 3·p², h, w) → (B, 3, h·p, w·p)."""
    if latents.shape[1] % (patch * patch):
        raise ConfigError(
            f"{latents.shape[1]} channels are not 3·{patch}² pixel channels",
            "decode pixel latents with the patch they were made with",
        )
    return F.pixel_shuffle(latents, patch)  # (B, 3, R, R)


def decode_pixels(latents: torch.Tensor, patch: int) -> np.ndarray:
    """Raw (de-normalised) pixel latents (B, 3p², h, w) → uint8 images (B, R, R, 3)."""
    x = depth_to_space(latents.float(), patch).clamp(-1, 1)  # (B, 3, R, R)
    x = ((x + 1.0) * 127.5).round().to(torch.uint8)  # (B, 3, R, R)
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (B, R, R, 3)


@dataclass
class PixelLatentsResult:
    """What ``write_pixel_latents`` did."""

    entry: str
    latent_id: str
    n: int
    written: int
    already_done: int
    latent_shape: tuple[int, ...]
    stats: dict[str, Any]


def _shard_values(images: np.ndarray, patch: int) -> np.ndarray:
    """uint8 (m, R, R, 3) → float16 (m, 2, 3p², h, w): the image and its mirror."""
    x = images_to_model(images)  # (m, 3, R, R)
    both = torch.stack([x, x.flip(-1)], dim=1)  # (m, 2, 3, R, R); flip 1 = mirrored, as extract
    z = space_to_depth(both.flatten(0, 1), patch)  # (m·2, 3p², h, w)
    return z.reshape(x.shape[0], 2, *z.shape[1:]).to(torch.float16).numpy()


PIXEL_ARRAYS = ("mean", "partial_sum", "partial_sumsq", "partial_count", "done")


def _pixel_group(entry: DatasetEntry, patch: int) -> tuple[ArrayGroup, tuple[int, ...]]:
    """The group ``latents/pixels-p<patch>`` of ``entry`` with its arrays (every one made before
    the group counts as created, so a killed creation is made anew by the rerun)."""
    side = entry.resolution // patch
    channels = 3 * patch * patch
    sample_shape = (2, channels, side, side)
    latent_id = pixel_latent_id(patch)
    attrs = {
        # the same keys `pack encode` writes, so the DiT trainer and checkpoints describe it
        "pack": {"run": None, "checkpoint": None, "pack_id": latent_id, "method": METHOD},
        "method": METHOD,
        "patch": patch,
        "latent_channels": channels,
        "grid": [side, side],
        "flips": 2,
        "arrays": "mean: float16 (N, F, 3p², h, w) space-to-depth of [-1, 1] pixels; no std",
    }
    shards = -(-entry.n // entry.shard)

    def build(group: zarr.Group) -> None:
        entry.add_sample_array(group, "mean", sample_shape, "float16")
        add_partial_arrays(group, shards, channels)  # checksummed, as `pack encode`'s

    grp, _ = entry.create_or_open_group("latents", latent_id, attrs, build, PIXEL_ARRAYS)
    return grp, sample_shape


def _pixel_stats(grp: ArrayGroup, entry: DatasetEntry) -> dict[str, Any]:
    """The channel stats from the per-shard sums, refused (``CacheError`` naming the repair) over
    a lost or corrupt sum of a shard holding written rows, or over sums that are not finite,
    exactly as ``pack encode`` refuses them (``cache.partials.checked_stats``)."""
    from repackctl.cache.verify import producer, rewrite

    path = f"latents/{grp.group.basename}"
    done = grp.done_mask()
    return checked_stats(grp, entry, done, producer(entry, path), rewrite(entry, path))


def write_pixel_latents(
    entry: DatasetEntry, patch: int, progress: ProgressFactory = null_progress
) -> PixelLatentsResult:
    """Write (or finish writing) ``latents/pixels-p<patch>`` of ``entry`` with exact stats.

    Single process; resumable by shard (a shard is marked done only after its values and its
    float64 partial sums are written). The channel stats are computed from the stored float16
    values of every valid sample, both flips and all positions (population std), as
    ``pack encode`` does, and combined in shard order, so they are deterministic. Like
    ``pack encode`` it refuses to record stats over lost, corrupt or non-finite partial sums.
    """
    _check_patch(entry.resolution, patch)
    grp, sample_shape = _pixel_group(entry, patch)
    done = grp.done_mask()
    codes_all = entry.done_mask()
    ranges = owned_ranges(entry.n, entry.shard)
    pending = [r for r in ranges if (done[r.start : r.stop] == PENDING).any()]
    already = entry.n - sum(len(r) for r in pending)
    written = 0
    total = sum(len(r) for r in pending)
    with (
        progress(f"pixel latents p{patch}", total=total, unit="img") as bar,
        entry_writer(entry.group),
    ):
        for rng in pending:
            codes = codes_all[rng.start : rng.stop]
            valid = codes == WRITTEN
            values = np.zeros((len(rng), *sample_shape), np.float16)  # (m, F, 3p², h, w)
            if valid.any():
                values[valid] = _shard_values(entry.images[rng.start : rng.stop][valid], patch)
            grp["mean"][rng.start : rng.stop] = values
            write_partials(grp, rng.start // entry.shard, values, valid)
            grp.done[rng.start : rng.stop] = codes  # last: the shard is complete
            written += int(valid.sum())
            bar.advance(len(rng))
    if (grp.done_mask() == PENDING).any():
        raise CacheError(
            f"pixel latents of {entry.name} are incomplete",
            "run the same call again: it finishes the missing shards",
        )
    stats = _pixel_stats(grp, entry) | {"pack_id": grp.group.basename, "entry": entry.name}
    update_changed(grp.group.attrs, {"stats": stats, "complete": True})
    return PixelLatentsResult(
        entry=entry.name,
        latent_id=grp.group.basename,
        n=entry.n,
        written=written,
        already_done=already,
        latent_shape=tuple(grp["mean"].shape),
        stats=stats,
    )


__all__ = [
    "METHOD",
    "PixelLatentsResult",
    "decode_pixels",
    "depth_to_space",
    "images_to_model",
    "pixel_latent_id",
    "space_to_depth",
    "write_pixel_latents",
]
