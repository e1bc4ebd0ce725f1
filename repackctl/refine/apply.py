"""Apply a trained Latent-Guided Refiner: load it safely, refine a batch, refine a samples folder.

Follows guanfangdong/RePack-then-Refine ``stage3/refine_batch.py`` (decoded PNG ⊕ latent →
refined PNG) with its latent-scale defect fixed (``reference/methods.md``): the official refiner was
trained on raw packed latents and then given *normalised* DiT latents. Here a refiner checkpoint
records ``latent_convention`` in its metadata, ``load_refiner`` refuses anything but ``"raw"``,
and every caller hands it raw latents (``repackctl.sample`` de-normalises with the DiT
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

from repackctl.errors import CheckpointError, ConfigError, DataError
from repackctl.extract import DistInfo, resolve_device
from repackctl.progress import ProgressFactory, null_progress
from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig
from repackctl.settings import Settings

LATENT_CONVENTION = "raw"


@dataclass
class RefinerHandle:
    """A refiner in eval mode with the checkpoint it came from."""

    model: LatentGuidedRefiner
    checkpoint: Path
    sha256: str
    extra: dict[str, Any]

    @property
    def pack_id(self) -> str | None:
        return self.extra.get("pack", {}).get("pack_id")

    def refine(self, images: np.ndarray, raw_latent: Tensor) -> np.ndarray:
        """uint8 (B, H, W, 3) decoded images + raw latents (B, d, h, w) → uint8 refined."""
        from repackctl.sample import from_uint8, to_uint8

        device = next(self.model.parameters()).device
        x = from_uint8(images, device)  # (B, 3, H, W)
        with torch.no_grad():
            out = self.model(x, raw_latent.to(device).float())  # (B, 3, H, W)
        return to_uint8(out)  # (B, H, W, 3)


def check_refiner_extra(extra: dict[str, Any], where: Path) -> RefinerConfig:
    """Validate a refiner checkpoint's metadata; returns its network config."""
    if extra.get("stage") != "refine" or "refiner_config" not in extra:
        raise CheckpointError(
            f"{where} is not a refiner checkpoint (stage {extra.get('stage')!r})",
            "pass a run made by `repackctl refine train` or `repackctl import official`",
        )
    convention = extra.get("latent_convention")
    cfg_convention = extra["refiner_config"].get("latent_convention", LATENT_CONVENTION)
    if convention != LATENT_CONVENTION or cfg_convention != LATENT_CONVENTION:
        raise CheckpointError(
            f"the refiner in {where} was trained on {convention or cfg_convention!r} latents; "
            f"repackctl refines with {LATENT_CONVENTION!r} (de-normalised) packed latents only",
            "retrain it with `repackctl refine train` (the official refiner was given normalised "
            "latents at sampling time, a mismatch this check exists to prevent)",
        )
    try:
        return RefinerConfig.from_dict(extra["refiner_config"])
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e.message}", "the checkpoint metadata is damaged") from e


def load_refiner(
    runs: str, run_or_checkpoint: str, pack_id: str | None = None, which: str = "ema"
) -> RefinerHandle:
    """Load a refiner run (latest checkpoint) or checkpoint folder; check convention and pack."""
    from repackctl.metrics.frechet import sha256_file
    from repackctl.sample import resolve_checkpoint_arg
    from repackctl.train.checkpoint import (
        is_complete,
        latest_checkpoint,
        load_model_weights,
        read_state,
    )

    folder = resolve_checkpoint_arg(runs, run_or_checkpoint)
    if not is_complete(folder):
        latest = latest_checkpoint(folder)
        if latest is None:
            raise CheckpointError(
                f"{folder} holds no complete checkpoint", "train it with `repackctl refine train`"
            )
        folder = latest
    extra = read_state(folder).get("extra", {})
    config = check_refiner_extra(extra, folder)
    got = extra.get("pack", {}).get("pack_id")
    if pack_id is not None and got is not None and got != pack_id:
        raise CheckpointError(
            f"the refiner was trained on pack model {got}, the samples come from {pack_id}",
            "train a refiner on the pack run the DiT uses (`repackctl refine train --pack-run`)",
        )
    model = LatentGuidedRefiner(config)
    try:
        model.load_state_dict(load_model_weights(folder, which))
    except RuntimeError as e:
        raise CheckpointError(f"{folder} does not fit its refiner config: {e}", None) from e
    return RefinerHandle(model.eval(), folder, sha256_file(folder / f"{which}.safetensors"), extra)


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
    from repackctl.sample import (
        generate_raw_latents,
        guided_velocity,
        load_dit_for_sampling,
        model_velocity,
        plan_from_protocol,
    )

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


def run_refine_apply(
    settings: Settings,
    samples_dir: str | Path,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
) -> ApplyResult:
    """Refine every PNG of a samples folder into ``<folder>--refine-<refiner>/`` (resumable)."""
    from repackctl.sample import (
        LATENTS_FILE,
        PROTOCOL_JSON,
        assemble,
        claim_folder,
        missing_indices,
        owned_range,
        png_path,
        read_png,
        write_json_atomic,
        write_png_atomic,
    )

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
    out = src.parent / f"{src.name}--refine-{refiner.checkpoint.parent.parent.name}"
    claim_folder(out, {"source": str(src), "refiner": refiner.sha256, "num": num})
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
