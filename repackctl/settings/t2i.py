"""Settings of `repackctl train t2i` (nested as `[t2i]` / `REPACKCTL_T2I__*`).

A text-to-image MMDiT on packed latents, conditioned on cached caption features
(`repackctl captions`), with the same transport, REPA, EMA and checkpoints as `train dit`: the
fields of ``DitSettings`` that apply are inherited (arch/size/patch/class_dropout/preset do not
apply and are not offered on the command line), plus the text fields below.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from repackctl.settings.dit import DitSettings

#: inherited fields that have no meaning for a text-conditioned MMDiT (hidden from the CLI)
NOT_T2I = ("arch", "size", "patch", "class_dropout", "preset", "no_shift")


class T2iSettings(DitSettings):
    """`repackctl train t2i` settings."""

    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Run": ("name",),
        "Data": ("latents", "pack_run", "entry", "features", "latent_sampling", "in_memory", "flip", "buffer_blocks", "prefetch"),
        "Text": ("text_encoder", "text_features", "caption_dropout"),
        "Model": ("model", "qk_norm", "grad_checkpointing", "compile"),
        "Transport": ("time_dist", "time_mu", "time_sigma", "time_shift", "cos_weight", "cos_norm_floor"),
        "REPA": ("repa_weight", "repa_depth", "repa_stop_step", "repa_hidden"),
        "Optimisation": ("steps", "global_batch", "grad_accum", "lr", "beta1", "beta2", "weight_decay", "schedule", "warmup_steps", "drop_step", "drop_lr", "min_lr", "ema_decay", "ema_warmup", "clip_grad"),
        "Output": ("ckpt_every", "keep_last", "log_every", "image_every", "image_steps"),
    }  # fmt: skip
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    preset: Literal["small"] = Field("small", description="no presets for t2i yet")
    name: str | None = Field(
        None,
        description="run name under the runs folder; none = t2i-<model id>; same name resumes",
    )
    model: str | None = Field(
        "mmdit-tiny",
        min_length=1,
        description="a registered MMDiT id: mmdit-tiny, mmdit-s-2, … mmdit-xl-1",
    )
    text_encoder: str = Field(
        "minilm", description="text encoder whose cached caption features are used"
    )
    text_features: str | None = Field(
        None,
        min_length=1,
        description="text group id in the entry; none = the only one of --text-encoder",
    )
    caption_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="probability of the null caption (for CFG)"
    )
    repa_depth: int | None = Field(
        None, ge=1, description="align the image tokens after this block; none = 8/24 of depth"
    )
