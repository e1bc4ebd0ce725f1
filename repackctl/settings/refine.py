"""Settings of `repackctl refine` (nested as `[refine]` / `REPACKCTL_REFINE__*`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from repackctl.paths import safe_name
from repackctl.settings.checks import (
    check_file_term,
    check_gan_options,
    ema_decay_below_one,
)
from repackctl.settings.training import check_some_term_on


class RefineSettings(BaseModel):
    """`repackctl refine train|apply` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below the class
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Run": ("allow_change", "pack_run", "name", "entry", "preset", "refiner"),
        "Model": ("base_channels", "norm_groups", "output", "disc_channels", "disc_norm", "disc_init"),
        "Optimisation": ("steps", "epochs", "batch_size", "lr", "ema_decay"),
        "Losses": ("l1_weight", "perceptual_weight", "lpips_weights", "gan_weight", "feature_weight"),
        "Data": ("noise", "flip", "triplet_batch"),
        "Output": ("ckpt_every", "log_every"),
    }  # fmt: skip

    allow_change: list[str] = Field(
        default_factory=list,
        description="on resume, settings allowed to change although that breaks exact "
        "continuation (setting names, or all); every allowed change goes to config_history.jsonl",
    )
    preset: Literal["auto", "small", "paper"] = Field(
        "auto",
        description="defaults: small (CPU minutes), paper (official recipe); auto = small on a CPU",
    )

    pack_run: str | None = Field(
        None, min_length=1, description="pack run whose reconstructions are refined"
    )
    name: str | None = Field(None, description="refiner run name; none = refine-<pack run>")
    entry: str | None = Field(
        None, min_length=1, description="cache entry; none = the pack run's entry"
    )
    noise: float = Field(
        0.0, ge=0, description="σ of noise added to the raw latent before decoding (triplets)"
    )
    flip: bool = Field(
        True,
        description="mirror each training triplet at random (the cached flips); paper preset "
        "off, as the official refiner never mirrors (prepare_offline_data.py p_hflip 0)",
    )
    steps: int | None = Field(
        None,
        ge=0,
        description="training steps; none = from epochs, else the preset (small 300); of steps "
        "and epochs, the one from the higher layer wins (both in one layer: refused)",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="training length in passes over the usable triplets, used when steps is not "
        "given: steps = ceil(epochs × triplets / batch_size); none = preset (paper 100, the "
        "official max_epochs; small none)",
    )
    batch_size: int = Field(8, ge=1, description="global batch")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (official 1e-4)")
    base_channels: int = Field(128, ge=1, description="refiner width (official 128)")
    output: Literal["image", "residual"] = Field(
        "image", description="image: tanh full image (official); residual: decoded + correction"
    )
    l1_weight: float = Field(1.0, ge=0, description="weight of the L1 term")
    perceptual_weight: float = Field(1.0, ge=0, description="LPIPS weight (off without weights)")
    lpips_weights: str | None = Field(
        None, min_length=1, description="local LPIPS-VGG weights file"
    )
    gan_weight: float = Field(
        0.5, ge=0, description="hinge PatchGAN generator weight (official 0.5)"
    )
    feature_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the weights-free perceptual term: multi-layer feature distance "
        "in the built-in encoder (stem + every block, LPIPS-style; pack.features); 0 = off",
    )
    norm_groups: int = Field(
        32,
        ge=1,
        description="GroupNorm groups (at most; official 32); small preset 4: at width 32, 32 "
        "groups normalise each channel on its own and strip every image's mean colour",
    )
    disc_channels: int = Field(64, ge=1, description="PatchGAN base channels (official 128)")
    disc_norm: Literal["group", "batch"] = Field(
        "group",
        description="discriminator norm: group (per sample: the same for any batch split) or "
        "batch (the official stage3 PatchDiscriminator); paper preset batch",
    )
    disc_init: Literal["dcgan", "pytorch"] = Field(
        "dcgan",
        description="discriminator init: dcgan (taming's: conv N(0, 0.02), norm scale "
        "N(1, 0.02), no conv bias before a norm) or pytorch (PyTorch's default init and a bias "
        "on every conv: the official stage3 PatchDiscriminator); paper preset pytorch",
    )
    ema_decay: float = Field(
        0.999,
        ge=0,
        description="EMA decay, below 1, of the refiner weights (sampling uses the EMA); 0 = no EMA (the "
        "EMA copy is the weights), the paper preset, as the official refiner keeps none",
    )
    ckpt_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1, description="steps between log lines")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="stop with an error after this many non-finite steps in a row"
    )
    triplet_batch: int = Field(
        32, ge=1, description="samples per decode batch when building triplets"
    )
    refiner: str | None = Field(None, min_length=1, description="refine apply: refiner run to use")

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        return value if value is None else safe_name(value, "run name")

    @field_validator("ema_decay")
    @classmethod
    def _ema_moves(cls, value: float) -> float:
        return ema_decay_below_one(value)

    def check_terms(self, section: str, sources: dict[str, str]) -> None:
        """Refuse the discriminator's options given with ``gan_weight`` 0, which builds no
        discriminator (they were accepted, recorded and ignored), as ``pack train`` does
        (``repackctl.settings.checks.check_term_options``; a preset's value is never refused);
        and a ``perceptual_weight`` above 0 given without ``lpips_weights`` (the default 1 without
        weights stays a warning), or ``lpips_weights`` given with ``perceptual_weight`` 0; and
        settings under which no loss term is on (the run saved its initial refiner)."""
        check_gan_options(self, section, sources, GAN_OPTIONS)
        check_file_term(self, section, sources, LPIPS_PAIR, "the LPIPS perceptual term", LPIPS_FILE)
        check_some_term_on(self, section, sources, LOSS_WEIGHTS, dict([LPIPS_PAIR]))


#: the options that only tune the GAN term (off when ``gan_weight`` is 0: no discriminator)
GAN_OPTIONS = ("disc_channels", "disc_norm", "disc_init")
#: the LPIPS term's weight and weights file (``check_file_term``), and the file to pass
LPIPS_PAIR = ("perceptual_weight", "lpips_weights")
LPIPS_FILE = "a local LPIPS-VGG .safetensors/.pth file (two files comma-separated)"
#: the weights of the refiner's loss terms (at least one must be on)
LOSS_WEIGHTS = ("l1_weight", "perceptual_weight", "gan_weight", "feature_weight")


# The official refiner (reference/methods.md; stage3/configs/refiner_offline.yaml, stage3/
# networks.py, stage3/train_refiner.py): base 128, PatchGAN 128 with BatchNorm and PyTorch's
# default init, Adam 1e-4, global batch 64 (8 per GPU × 8 GPUs), L1 + LPIPS + 0.5 hinge GAN,
# 100 epochs, no EMA. `small` fits a CPU in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "epochs": 100,  # official max_epochs 100: steps = ceil(100 × triplets / 64)
        "batch_size": 64,
        "lr": 1e-4,
        "base_channels": 128,
        "norm_groups": 32,
        "disc_channels": 128,
        "disc_norm": "batch",  # official nn.BatchNorm2d
        # official PatchDiscriminator: no init of its own (PyTorch's defaults), bias on each conv
        "disc_init": "pytorch",
        "ema_decay": 0.0,  # the official refiner keeps no EMA: the EMA copy is the weights
        "output": "image",
        "gan_weight": 0.5,
        "flip": False,  # official triplets are never mirrored (prepare_offline_data.py:76)
        # official every_n_train_steps 5000 counts Lightning's global_step, which advances once
        # per optimizer step: twice per batch (refiner and discriminator; Lightning issue 17958)
        "ckpt_every": 2500,
    },
    "small": {
        "steps": 300,
        "batch_size": 8,
        "lr": 1e-4,
        "base_channels": 32,
        "norm_groups": 4,
        "disc_channels": 16,
        "disc_norm": "group",
        "disc_init": "dcgan",
        # The refiner's EMA has no warm-up: 0.999 over these 300 steps left the EMA (which
        # `refine apply` and `sample --refiner` load) 0.999^300 = 74 % the initial weights, an
        # almost untrained refiner; 0.99 leaves 5 % (the demo's value).
        "ema_decay": 0.99,
        "epochs": None,  # the step count above
        "ckpt_every": 100,
    },
}
RefineSettings.PRESETS.update(PRESETS)
