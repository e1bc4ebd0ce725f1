"""Settings of `repackctl train t2i` (nested as `[t2i]` / `REPACKCTL_T2I__*`).

A text-to-image MMDiT on packed latents, conditioned on cached caption features
(`repackctl captions`), with the same transport, REPA, EMA and checkpoints as `train dit`: the
fields of ``DitSettings`` that apply are inherited, plus the text fields below. Those that do not
apply (``NOT_T2I``: arch/size/patch/class_dropout/no_shift) are not offered on the command line,
never shown, stored or passed on (excluded from ``model_dump``), and a value given for one in a
config file or the environment is refused, naming what to use instead.

``preset = "repa"`` switches the defaults to REPA's text-to-image recipe (sihyun-yu/REPA
``train_t2i.py``, ``models/mmdit.py``, ``dataset.py``; ``PRESETS`` below), as ``train dit
--preset repa`` does for REPA's class-conditional one; ``small`` (the default) changes nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from repackctl.settings.dit import REPA_SHARED, DitSettings

_MODEL = "the model is t2i.model (--model), a registered MMDiT id: mmdit-tiny, mmdit-s-2 … "
_MODEL += "mmdit-xl-1"
#: inherited fields that have no meaning for a text-conditioned MMDiT → what to use instead
NOT_T2I_USE: dict[str, str] = {
    "arch": _MODEL,
    "size": _MODEL,
    "patch": _MODEL + " (the patch is the id's last number)",
    "class_dropout": "the null-caption probability of train t2i is t2i.caption_dropout "
    "(--caption-dropout)",
    "no_shift": "the MMDiT's adaLN always has its shift; there is nothing to switch",
}
#: those fields (hidden from the CLI, excluded from dumps, refused when given)
NOT_T2I = tuple(NOT_T2I_USE)


class T2iSettings(DitSettings):
    """`repackctl train t2i` settings."""

    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Run": ("name", "preset"),
        "Data": ("latents", "pack_run", "entry", "features", "latent_sampling", "in_memory", "flip", "buffer_blocks", "prefetch"),
        "Text": ("text_encoder", "text_features", "caption_dropout"),
        "Model": ("model", "qk_norm", "grad_checkpointing", "compile"),
        "Transport": ("time_dist", "time_mu", "time_sigma", "time_shift", "cos_weight", "cos_norm_floor"),
        "REPA": ("repa_weight", "repa_depth", "repa_stop_step", "repa_hidden"),
        "Optimisation": ("steps", "global_batch", "grad_accum", "lr", "beta1", "beta2", "weight_decay", "schedule", "warmup_steps", "drop_step", "drop_lr", "min_lr", "ema_decay", "ema_warmup", "clip_grad"),
        "Output": ("ckpt_every", "keep_last", "log_every", "image_every", "image_steps"),
    }  # fmt: skip
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below the class

    preset: Literal["small", "repa"] = Field(
        "small",
        description="defaults: small (the CPU demo's) or repa (REPA's text-to-image MMDiT recipe)",
    )
    # the inherited fields that do not apply: their defaults, never dumped (not shown, not stored)
    arch: Literal["lightningdit", "dit", "sit"] = Field(
        "lightningdit", exclude=True, description="not a t2i setting (use model)"
    )
    size: Literal["tiny", "s", "b", "l", "xl"] = Field(
        "tiny", exclude=True, description="not a t2i setting (use model)"
    )
    patch: int | None = Field(None, exclude=True, description="not a t2i setting (use model)")
    class_dropout: float = Field(
        0.1, exclude=True, description="not a t2i setting (use caption_dropout)"
    )
    no_shift: bool = Field(False, exclude=True, description="not a t2i setting")
    name: str | None = Field(
        None,
        description="run name under the runs folder; none = t2i-<model id>; same name resumes",
    )
    model: str | None = Field(
        "mmdit-tiny",
        min_length=1,
        description="a registered MMDiT id: mmdit-tiny, mmdit-s-2, … mmdit-xl-1",
    )
    # off, unlike train dit: a caption that names a position ("on the left"; the built-in
    # captions and COCO's do) is wrong for the mirrored image, and REPA's text-to-image recipe
    # reads each image as stored
    flip: bool = Field(
        False,
        description="random horizontal flip per sample (cached flips); off: captions that name "
        "left or right would be wrong for the mirrored image",
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

    @field_validator(*NOT_T2I, mode="before")
    @classmethod
    def _not_t2i(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a value given for a ``train dit`` field that ``train t2i`` does not use (it was
        shown and stored as if it acted, and ignored); the settings layer names its source."""
        name = info.field_name or ""
        raise PydanticCustomError(
            "not_t2i",
            "{name} = {value} is a train dit setting that train t2i does not use (it would be "
            "ignored): {use}; leave {name} out of the t2i settings",
            {"name": name, "value": repr(value), "use": NOT_T2I_USE.get(name, "")},
        )


# `--preset repa`: REPA's text-to-image recipe, value for value (sihyun-yu/REPA at the commit the
# tests name; line numbers in tests/settings/test_t2i_repa_preset.py). What a preset cannot
# set is a named deviation (README Presets, "t2i repa"): fp16 mixed precision (`--precision`),
# the text encoder's weights (CLIP ViT-L/14, `repackctl captions --text-encoder clip
# --text-weights DIR`), 77 unmasked caption tokens (REPA attends to the padding; ours masks it).
PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "repa": {
        # models/mmdit.py: depth 24, width 32·24 = 768, 24 heads, patch 2, mlp 4, qkv bias, no
        # qk-norm, c = emb(t): the registered mmdit-repa-2
        "model": "mmdit-repa-2",
        "qk_norm": False,
        # U-ViT's CLIP ViT-L/14 token features (77 × 768), the empty caption's as the null
        "text_encoder": "clip",
        # dataset.py MSCOCO256Features p_uncond 0.1 (train_t2i.py's --cfg-prob is unused)
        "caption_dropout": 0.1,
        # train_t2i.py: the optimisation, loss, REPA and data rules of REPA's train.py
        # (sample_posterior every step, no flip)
        **REPA_SHARED,
        # README's launch command passes --allow-tf32
        "tf32": True,
        # --checkpointing-steps 50000, every checkpoint kept (none is ever deleted);
        # --sampling-steps 10000 with a 50-step Euler sampler
        "ckpt_every": 50_000,
        "keep_last": 0,
        "image_every": 10_000,
        "image_steps": 50,
    },
}

T2iSettings.PRESETS.update(PRESETS)
