"""Load a trained Latent-Guided Refiner for sampling or for applying to a samples folder."""

from __future__ import annotations

from collections.abc import Sequence
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

    def check_fits(
        self,
        image_shape: Sequence[int],
        latent_shape: Sequence[int],
        pack: dict[str, Any],
        where: str,
    ) -> None:
        """Refuse images or latents of another size than the refiner was trained for.

        The network is convolutional and resizes the latent to the image, so a refiner of 32 px
        runs on 64 px samples without an error and returns images nobody trained it to make.
        ``image_shape`` is (H, W, …) of the samples, ``latent_shape`` their (d, h, w), ``pack``
        the samples' pack model (``checkpoint``, ``pack_id``). The trained latent grid is the
        ``latent_shape`` the refiner recorded (refiners trained before it was recorded: that of
        its pack checkpoint, or of the samples' one when it is the same pack model); when none
        can be read, the image side stands for it: one pack model decodes one latent grid to
        one image side."""
        cfg = self.model.config
        side, (h, w) = cfg.resolution, tuple(int(s) for s in image_shape[:2])
        wrong = []
        if (h, w) != (side, side):
            wrong.append(f"images of {h}x{w} px (it was trained on {side}x{side})")
        if int(latent_shape[0]) != cfg.latent_channels:
            wrong.append(
                f"latents of {latent_shape[0]} channels (trained on {cfg.latent_channels})"
            )
        same_pack = self.pack_id is not None and self.pack_id == pack.get("pack_id")
        trained = self.extra.get("latent_shape") or pack_latent_shape(
            [
                self.extra.get("pack", {}).get("checkpoint"),
                pack.get("checkpoint") if same_pack else None,
            ]
        )
        grid = [int(s) for s in latent_shape[1:]]
        if trained is not None and grid != trained[1:]:
            wrong.append(
                f"a latent grid of {'x'.join(map(str, grid))} "
                f"(trained on {'x'.join(map(str, trained[1:]))})"
            )
        if wrong:
            raise ConfigError(
                f"the refiner {self.checkpoint} cannot refine {where}: " + ", ".join(wrong),
                f"refine samples made at {side} px with this refiner, or train one on the pack "
                f"model of these samples at {h} px: `repackctl refine train --pack-run RUN`",
            )


def pack_latent_shape(checkpoints: Sequence[str | None]) -> list[int] | None:
    """``latent_shape`` (d, h, w) recorded by the first readable pack checkpoint of
    ``checkpoints`` (None when none can be read: moved, deleted, or made before it was kept)."""
    from repackctl.train.checkpoint import read_state

    for ckpt in checkpoints:
        if not ckpt:
            continue
        try:
            shape = (read_state(ckpt).get("extra") or {}).get("latent_shape")
        except (CheckpointError, OSError, ValueError):
            continue
        if isinstance(shape, list) and len(shape) == 3:
            return [int(s) for s in shape]
    return None


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
    from repackctl.paths import resolve_checkpoint_arg
    from repackctl.train.checkpoint import (
        checkpoint_for_loading,
        load_model_weights,
        read_state,
        weights_sha256,
    )

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
    return RefinerHandle(model.eval(), folder, weights_sha256(folder, which), extra)


LATENT_CONVENTION = "raw"
