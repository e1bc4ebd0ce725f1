"""Settings of `repackctl refine` (nested as `[refine]` / `REPACKCTL_REFINE__*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RefineSettings(BaseModel):
    """`repackctl refine train|apply` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    pack_run: str | None = Field(None, description="pack run whose reconstructions are refined")
    name: str | None = Field(None, description="refiner run name; none = refine-<pack run>")
    entry: str | None = Field(None, description="cache entry; none = the pack run's entry")
    noise: float = Field(
        0.0, ge=0, description="σ of noise added to the raw latent before decoding (triplets)"
    )
    steps: int = Field(2000, ge=0, description="training steps")
    batch_size: int = Field(8, ge=1, description="global batch")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (official 1e-4)")
    base_channels: int = Field(128, ge=1, description="refiner width (official 128)")
    output: Literal["image", "residual"] = Field(
        "image", description="image: tanh full image (official); residual: decoded + correction"
    )
    l1_weight: float = Field(1.0, ge=0, description="weight of the L1 term")
    perceptual_weight: float = Field(1.0, ge=0, description="LPIPS weight (off without weights)")
    lpips_weights: str | None = Field(None, description="local LPIPS-VGG weights file")
    gan_weight: float = Field(
        0.5, ge=0, description="hinge PatchGAN generator weight (official 0.5)"
    )
    disc_channels: int = Field(64, ge=1, description="PatchGAN base channels (official 128)")
    ema_decay: float = Field(0.999, ge=0, le=1, description="EMA decay of the refiner weights")
    ckpt_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1, description="steps between log lines")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="stop with an error after this many non-finite steps in a row"
    )
    triplet_batch: int = Field(
        32, ge=1, description="samples per decode batch when building triplets"
    )
    refiner: str | None = Field(None, description="refine apply: refiner run to use")
