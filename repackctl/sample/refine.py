"""Apply a trained Latent-Guided Refiner: load it safely, refine a batch, refine a samples folder.

Follows guanfangdong/RePack-then-Refine ``stage3/refine_batch.py`` (decoded PNG ⊕ latent →
refined PNG) with its latent-scale defect fixed (``reference/methods.md``): the official refiner was
trained on raw packed latents and then given *normalised* DiT latents. Here a refiner checkpoint
records ``latent_convention`` in its metadata, ``load_refiner`` refuses anything but ``"raw"``,
and every caller hands it raw latents (``repackctl.sample.run`` de-normalises with the DiT
checkpoint's stats and stores the raw latents in ``latents.npy``).

The decoded image enters the refiner the way the triplets stored it: quantised to uint8 and
mapped back to [−1, 1]. So ``sample --refiner R`` and ``sample`` followed by
``refine apply --refiner R`` give the same PNGs.

A refined folder is tied to the *content* of the samples it refines (``source_digest``: the arrays
of samples.npz and the raw latents), never to the source's path or to a few settings: samples
made again with other labels, shift, guidance … in the same folder are never answered with the
old refined images. A refined folder of other samples is refused by name, and nothing in it is
changed.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import ConfigError, DataError
from repackctl.files import read_png, sha256_file, write_json_atomic, write_png_atomic
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.progress import ProgressFactory, null_progress
from repackctl.refine.load import LATENT_CONVENTION, RefinerHandle, load_refiner
from repackctl.runtime import DistInfo, resolve_device
from repackctl.sample.folder import (
    LATENTS_FILE,
    assemble,
    claim_folder,
    missing_indices,
    owned_range,
    png_path,
    refined_suffix,
)
from repackctl.settings import Settings

# the keys of the settings file of a folder written by `refine apply` (``source`` in older ones)
_APPLY_KEYS = frozenset({"source", "source_sha256", "refiner", "num"})
# card fields that fix the generated samples: named when a refined folder holds other samples
_GENERATION_KEYS = (
    "checkpoint_sha256",
    "weights",
    "seed",
    "sampler_spec",
    "shift",
    "cfg_scale",
    "cfg_interval",
    "cfg_legacy_channels",
    "guide",
    "labels",
    "num_samples",
    "precision",
)


@dataclass
class ApplyResult:
    """What ``run_refine_apply`` did."""

    out_dir: Path
    num: int
    written: int
    already_done: int
    latents_source: str
    seconds: float


def _regenerate(protocol: dict[str, Any], runs: str, indices: list[int], device) -> Tensor:
    """Raw latents of ``indices`` recomputed from the DiT named in the folder's protocol."""
    from repackctl.dit.load import load_dit_for_sampling
    from repackctl.sample.generate import generate_raw_latents, guided_velocity, model_velocity
    from repackctl.sample.plan import plan_from_protocol

    if protocol.get("guide"):
        raise DataError(
            "this folder has no latents.npy and was made with autoguidance",
            "sample it again with the refiner: `repackctl sample ... --refiner RUN`",
        )
    dit = load_dit_for_sampling(runs, protocol["checkpoint"], None, protocol["weights"])
    if dit.sha256 != protocol["checkpoint_sha256"]:
        raise DataError(
            f"{protocol['checkpoint']} changed since the samples were made",
            "sample again, or keep latents.npy beside the samples",
        )
    plan = plan_from_protocol(protocol)
    fn = model_velocity(dit.model.to(device).eval(), dit.extra, autocast=False)
    velocity = guided_velocity(fn, plan, int(dit.extra["num_classes"]), None)
    labels = np.asarray(protocol["labels"], dtype=np.int64)
    with torch.no_grad():
        return generate_raw_latents(
            velocity, plan, dit.extra, labels, int(protocol["seed"]), indices, device
        )


def _hash_npz_members(path: Path, h: Any) -> None:
    """Feed the names, sizes and bytes of the arrays in ``path`` (a zip) to the hash ``h``."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0".encode())
                with zf.open(info) as f:
                    while block := f.read(1 << 24):
                        h.update(block)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f"{path} is not a readable samples file ({e})",
            "finish the folder with the same `repackctl sample` command",
        ) from None


def _latents_sha(folder: Path) -> str | None:
    """sha256 of the folder's latents.npy, or None when it has none."""
    path = folder / LATENTS_FILE
    return sha256_file(path) if path.is_file() else None


def source_digest(src: Path) -> str:
    """sha256 of what a samples folder holds: the arrays of its samples.npz (images, labels) and
    its raw latents (latents.npy, or ``none`` when they are regenerated from the DiT).

    The npz members are hashed, not the file: what a zip records beside them (write times,
    layout) says nothing about the samples."""
    npz = src / "samples.npz"
    if not npz.is_file():
        raise DataError(
            f"{src} has no samples.npz", "finish it with the same `repackctl sample` command"
        )
    h = hashlib.sha256(b"samples.npz\0")
    _hash_npz_members(npz, h)
    h.update(f"\0latents.npy\0{_latents_sha(src) or 'none'}".encode())
    return h.hexdigest()


def _move_away_hint(out: Path) -> str:
    return (
        f"move {out} away (or delete it if its images are no longer needed), then run "
        "`repackctl refine apply` again; nothing in it was changed"
    )


def _refined_by_sample(out: Path, src: Path, protocol: dict, refiner_sha: str) -> bool:
    """True when ``out`` (a `sample --refiner` folder) holds the samples of ``src``, refined by
    this refiner: the same raw latents (byte for byte), labels and generation settings; else a
    ``ConfigError`` naming ``out`` and the settings that differ."""
    card = out / PROTOCOL_JSON
    if not card.is_file():
        raise ConfigError(
            f"{out} is an unfinished folder of `repackctl sample --refiner`",
            f"finish it with its `repackctl sample` command, or {_move_away_hint(out)}",
        )
    try:
        done = json.loads(card.read_text())
    except ValueError:
        done = {}  # unreadable: it proves nothing
    diff = [k for k in _GENERATION_KEYS if done.get(k) != protocol.get(k)]
    if (done.get("pack") or {}).get("pack_id") != (protocol.get("pack") or {}).get("pack_id"):
        diff.append("pack model")
    if (done.get("refiner") or {}).get("sha256") != refiner_sha:
        diff.append("refiner checkpoint")
    src_latents = _latents_sha(src)
    if not diff and (src_latents is None or _latents_sha(out) != src_latents):
        diff.append("latents")  # e.g. sampled on another device: not provably the same samples
    if not diff:
        return True
    raise ConfigError(
        f"{out} holds images that `repackctl sample --refiner` refined from other samples than "
        f"those in {src} (other {', '.join(diff)})",
        _move_away_hint(out),
    )


def _already_refined(out: Path, src: Path, protocol: dict, fingerprint: dict[str, Any]) -> bool:
    """Whether ``out`` already holds the refined samples of ``src`` (made by `sample --refiner`).

    False for a new folder and for a `refine apply` folder of the same source and refiner
    (resumed); a folder that holds refinements of other samples is refused by name."""
    marker = out / SETTINGS_JSON
    if not marker.is_file():
        return False  # new, empty or foreign: claim_folder decides
    try:
        old = json.loads(marker.read_text())
    except ValueError:
        return False  # claim_folder refuses an unreadable settings file
    if not isinstance(old, dict):
        return False  # claim_folder refuses it
    if not set(old) <= _APPLY_KEYS:
        return _refined_by_sample(out, src, protocol, fingerprint["refiner"])
    if old == fingerprint:
        return False
    if "refiner" in old and old["refiner"] != fingerprint["refiner"]:
        why = "another checkpoint of the refiner run made them"
    elif "source_sha256" not in old:
        why = "an older repackctl made them without recording which samples they refine"
    else:
        why = f"the samples in {src} changed since they were refined"
    raise ConfigError(f"{out} holds other refined images: {why}", _move_away_hint(out))


def _source_protocol(src: Path) -> dict[str, Any]:
    """The protocol card of an unrefined samples folder with raw latents."""
    proto_path = src / PROTOCOL_JSON
    if not proto_path.is_file():
        raise DataError(
            f"{src} has no {PROTOCOL_JSON}", "pass a folder written by `repackctl sample`"
        )
    protocol = json.loads(proto_path.read_text())
    if protocol.get("refiner"):
        raise DataError(f"{src} is already refined", "refine the unrefined samples folder")
    if protocol.get("latent_convention", LATENT_CONVENTION) != LATENT_CONVENTION:
        raise DataError(f"{src} stores {protocol['latent_convention']!r} latents", None)
    return protocol


def _open_latents(src: Path, protocol: dict[str, Any], num: int) -> np.ndarray | None:
    """The stored raw latents (memory-mapped), or None when they must be regenerated."""
    if not (src / LATENTS_FILE).is_file():
        return None
    latents = np.load(src / LATENTS_FILE, mmap_mode="r", allow_pickle=False)
    if latents.shape[0] != num or list(latents.shape[1:]) != protocol["latent_shape"]:
        raise DataError(f"{src / LATENTS_FILE} has shape {latents.shape}", "sample again")
    return latents


def _refine_missing(
    settings: Settings,
    src: Path,
    out: Path,
    protocol: dict[str, Any],
    refiner: RefinerHandle,
    todo: list[int],
    progress: ProgressFactory,
    device: torch.device,
) -> None:
    """Refine the samples ``todo`` of ``src`` into ``out``, batch by batch."""
    latents = _open_latents(src, protocol, int(protocol["num_samples"]))
    batch = settings.sample.batch_size
    with progress(f"refine {src.name}", total=len(todo), unit="img") as bar:
        for start in range(0, len(todo), batch):
            idx = todo[start : start + batch]
            images = np.stack([read_png(png_path(src, i)) for i in idx])  # (B, H, W, 3)
            if latents is not None:
                raw = torch.from_numpy(np.asarray(latents[idx], dtype=np.float32))
            else:
                raw = _regenerate(protocol, settings.runs, idx, device)  # (B, d, h, w)
            refined = refiner.refine(images, raw)  # (B, H, W, 3)
            for j, i in enumerate(idx):
                write_png_atomic(png_path(out, i), refined[j])
            bar.advance(len(idx))


def run_refine_apply(
    settings: Settings,
    samples_dir: str | Path,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
) -> ApplyResult:
    """Refine every PNG of a samples folder into ``<folder>--refine-<refiner>/`` (resumable)."""
    dist = dist or DistInfo.from_env()
    src = Path(samples_dir).expanduser().resolve()
    name = settings.refine.refiner
    if not name:
        raise ConfigError(
            "no refiner given", "pass --refiner RUN (made by `repackctl refine train`)"
        )
    protocol = _source_protocol(src)
    device = resolve_device(settings.device, dist.local_rank)
    refiner = load_refiner(settings.runs, name, protocol.get("pack", {}).get("pack_id"))
    refiner.model.to(device)

    num = int(protocol["num_samples"])
    out = src.parent / f"{src.name}{refined_suffix(refiner.checkpoint.parent.parent.name)}"
    fingerprint = {"source_sha256": source_digest(src), "refiner": refiner.sha256, "num": num}
    if _already_refined(out, src, protocol, fingerprint):
        return ApplyResult(out, num, 0, num, "already refined (by `sample --refiner`)", 0.0)
    claim_folder(out, fingerprint, elsewhere=f"move {out} away")
    has_latents = (src / LATENTS_FILE).is_file()
    mine = len(owned_range(num, dist.rank, dist.world))
    todo = missing_indices(out, owned_range(num, dist.rank, dist.world))
    t0 = time.perf_counter()
    _refine_missing(settings, src, out, protocol, refiner, todo, progress, device)
    seconds = time.perf_counter() - t0
    dist.barrier()
    if dist.rank == 0:
        labels = np.asarray(protocol["labels"], dtype=np.int64)
        assemble(out, labels, settings.sample.grid, None)
        card = dict(protocol)
        card["refiner"] = {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256}
        card["refined_from"] = str(src)
        card["refined_from_sha256"] = fingerprint["source_sha256"]
        write_json_atomic(out / PROTOCOL_JSON, card)
    dist.barrier()
    source = "latents.npy" if has_latents else "regenerated from the DiT"
    return ApplyResult(out, num, len(todo), mine - len(todo), source, seconds)
