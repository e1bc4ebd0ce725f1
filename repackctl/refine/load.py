"""Load a trained Latent-Guided Refiner for sampling or for applying to a samples folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import CheckpointError, ConfigError
from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig


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
        from repackctl.files import from_uint8, to_uint8

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
    from repackctl.files import sha256_file_cached
    from repackctl.paths import resolve_checkpoint_arg
    from repackctl.train.checkpoint import checkpoint_for_loading, load_model_weights, read_state

    found = checkpoint_for_loading(resolve_checkpoint_arg(runs, run_or_checkpoint))
    if found is None:
        raise CheckpointError(
            f"{run_or_checkpoint} holds no complete checkpoint",
            "train it with `repackctl refine train`",
        )
    folder = found
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
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"{folder} does not fit its refiner config: {first}", "use another checkpoint"
        ) from None
    return RefinerHandle(
        model.eval(), folder, sha256_file_cached(folder / f"{which}.safetensors"), extra
    )


LATENT_CONVENTION = "raw"
