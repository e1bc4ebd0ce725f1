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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import ConfigError, DataError
from repackctl.files import read_png, write_json_atomic, write_png_atomic
from repackctl.paths import PROTOCOL_JSON
from repackctl.progress import ProgressFactory, null_progress
from repackctl.refine.load import LATENT_CONVENTION, load_refiner
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


def _refined_already(out: Path, protocol: dict, refiner_sha: str, num: int) -> bool:
    """``out`` is a finished samples folder of the same DiT samples refined by the same refiner."""
    card = out / "protocol.json"
    if not card.is_file():
        return False
    done = json.loads(card.read_text())
    same = ("checkpoint_sha256", "seed", "sampler", "steps", "cfg_scale", "label_scheme")
    return (
        (done.get("refiner") or {}).get("sha256") == refiner_sha
        and done.get("num_samples") == num
        and all(done.get(k) == protocol.get(k) for k in same)
    )


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
    device = resolve_device(settings.device, dist.local_rank)
    refiner = load_refiner(settings.runs, name, protocol.get("pack", {}).get("pack_id"))
    refiner.model.to(device)

    num = int(protocol["num_samples"])
    out = src.parent / f"{src.name}{refined_suffix(refiner.checkpoint.parent.parent.name)}"
    if _refined_already(out, protocol, refiner.sha256, num):
        return ApplyResult(out, num, 0, num, "already refined (by `sample --refiner`)", 0.0)
    claim_folder(
        out,
        {"source": str(src), "refiner": refiner.sha256, "num": num},
        elsewhere=f"use another refiner run, or move {out.name} away",
    )
    latents = None
    source = "latents.npy"
    if (src / LATENTS_FILE).is_file():
        latents = np.load(src / LATENTS_FILE, mmap_mode="r", allow_pickle=False)
        if latents.shape[0] != num or list(latents.shape[1:]) != protocol["latent_shape"]:
            raise DataError(f"{src / LATENTS_FILE} has shape {latents.shape}", "sample again")
    else:
        source = "regenerated from the DiT"
    todo = missing_indices(out, owned_range(num, dist.rank, dist.world))
    mine = len(owned_range(num, dist.rank, dist.world))
    t0 = time.perf_counter()
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
    seconds = time.perf_counter() - t0
    dist.barrier()
    if dist.rank == 0:
        labels = np.asarray(protocol["labels"], dtype=np.int64)
        assemble(out, labels, settings.sample.grid, None)
        card = dict(protocol)
        card["refiner"] = {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256}
        card["refined_from"] = str(src)
        write_json_atomic(out / PROTOCOL_JSON, card)
    dist.barrier()
    return ApplyResult(out, num, len(todo), mine - len(todo), source, seconds)
