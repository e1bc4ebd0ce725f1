"""Settings of `repackctl train dit` (nested as `[dit]` / `REPACKCTL_DIT__*`).

`repackctl train dit` trains a DiT on packed latents (RePack stage 2) with optional REPA. The
defaults are a small model that trains on the built-in dataset in a couple of minutes on a CPU;
``preset = "paper"`` switches the defaults to the official RePack-DiT-XL/1 recipe
(``reference/methods.md``); any value set in a file, the environment or a flag still wins.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from repackctl.errors import ConfigError
from repackctl.paths import safe_name
from repackctl.settings.checks import (
    check_output_options,
    check_term_options,
    ema_decay_below_one,
    refuse_ignored,
    user_given,
)


class DitSettings(BaseModel):
    """`repackctl train dit` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --help panels and short flags of the generated options (repackctl/cli/options.py)
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Run": ("allow_change", "name", "preset"),
        "Data": ("latents", "pack_run", "entry", "features", "latent_sampling", "in_memory", "flip", "buffer_blocks", "prefetch"),
        "Model": ("arch", "size", "patch", "depth", "width", "heads", "model", "qk_norm", "no_shift", "class_dropout", "grad_checkpointing", "compile", "kernels", "tf32"),
        "Transport": ("time_dist", "time_mu", "time_sigma", "time_shift", "cos_weight", "cos_norm_floor"),
        "REPA": ("repa_weight", "repa_depth", "repa_stop_step", "repa_hidden"),
        "Optimisation": ("steps", "global_batch", "grad_accum", "lr", "beta1", "beta2", "weight_decay", "schedule", "warmup_steps", "drop_step", "drop_lr", "min_lr", "ema_decay", "ema_warmup", "clip_grad", "parallel"),
        "Output": ("ckpt_every", "keep_last", "log_every", "image_every", "image_steps"),
    }  # fmt: skip
    SHORT: ClassVar[dict[str, str]] = {"global_batch": "-b"}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below the class

    # ---- run and preset
    name: str | None = Field(
        None,
        description="run name under the runs folder; none = dit-<model id>; same name resumes",
    )
    allow_change: list[str] = Field(
        default_factory=list,
        description="on resume, settings allowed to change although that breaks exact "
        "continuation (setting names, or all); every allowed change goes to config_history.jsonl",
    )
    preset: Literal["small", "paper", "repa"] = Field(
        "small",
        description="defaults: small (CPU minutes), paper (official RePack XL/1) or repa (REPA's "
        "SiT-XL/2 recipe)",
    )

    # ---- data
    latents: str | None = Field(
        None,
        min_length=1,
        description="packed-latent id in the cache; none = the newest one (or of --pack-run)",
    )
    pack_run: str | None = Field(
        None,
        min_length=1,
        description="use the newest latents encoded by this pack run (name under runs/)",
    )
    entry: str | None = Field(
        None,
        min_length=1,
        description="cache entry (dataset--split--res) to search; none = every entry",
    )
    features: str | None = Field(
        None,
        min_length=1,
        description="encoder features used as REPA targets; none = the ones of the pack",
    )
    latent_sampling: Literal["mean", "sample", "fixed"] = Field(
        "mean",
        description="train on the posterior mean (mean), a fresh posterior sample per step "
        "(sample), or one posterior sample per image and flip, drawn once from the seed and "
        "reused every epoch (fixed: the official latent cache)",
    )
    in_memory: bool | None = Field(
        None,
        description="load the arrays into memory instead of chunk-block reads; "
        "none = when under memory_gb",
    )
    flip: bool = Field(True, description="random horizontal flip per sample (cached flips)")

    # ---- model
    arch: Literal["lightningdit", "dit", "sit"] = Field(
        "lightningdit", description="model family: lightningdit (official), dit or sit"
    )
    size: Literal["tiny", "s", "b", "l", "xl"] = Field(
        "tiny", description="model size: tiny (tests/CPU), s, b, l, xl (paper: xl)"
    )
    patch: int | None = Field(
        None, description="patch size 1, 2, 4 or 8; none = the smallest of the family"
    )
    depth: int | None = Field(
        None, ge=1, description="number of blocks; none = the size's (custom small models)"
    )
    width: int | None = Field(
        None, ge=1, description="hidden size; none = the size's (a multiple of --heads)"
    )
    heads: int | None = Field(None, ge=1, description="attention heads; none = the size's")
    model: str | None = Field(
        None,
        min_length=1,
        description="a registered model id (e.g. a plugin's); overrides arch/size/patch",
    )
    qk_norm: bool = Field(False, description="RMS-normalise queries and keys (NaN fix, long runs)")
    no_shift: bool = Field(False, description="adaLN without shift (LightningDiT wo_shift)")
    class_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="label dropout for CFG")
    grad_checkpointing: bool = Field(False, description="recompute activations (saves memory)")

    # ---- transport (our time: t = 0 data, t = 1 noise)
    time_dist: Literal["uniform", "logit_normal"] = Field(
        "logit_normal", description="training-time distribution (official: logit_normal)"
    )
    time_mu: float = Field(0.0, description="logit-normal location")
    time_sigma: float = Field(1.0, gt=0.0, description="logit-normal scale")
    time_shift: float = Field(1.0, gt=0.0, description="timestep shift (> 1: more noise)")
    cos_weight: float = Field(1.0, ge=0.0, description="weight of the 1 − cos velocity term")
    cos_norm_floor: float = Field(
        0.01,
        ge=0.0,
        lt=1.0,
        description="the 1 − cos term floors |v̂| at this fraction of |v|: an adaLN-Zero model "
        "starts at v̂ = 0, where the plain cosine's gradient explodes (~1e6 at step 1); "
        "0 = the official plain cosine (paper preset)",
    )

    # ---- REPA
    repa_weight: float = Field(0.5, ge=0.0, description="λ of the REPA alignment loss; 0 = off")
    repa_depth: int | None = Field(
        None, ge=1, description="align the hidden state after this block; none = 8/28 of depth"
    )
    repa_stop_step: int | None = Field(
        None, ge=0, description="switch the alignment off from this step on (HASTE)"
    )
    repa_hidden: int | None = Field(
        None, ge=1, description="REPA projector MLP width; none = 2048 (4·D for tiny widths)"
    )

    # ---- optimisation (TrainConfig)
    steps: int = Field(2000, ge=0, description="optimizer steps")
    global_batch: int = Field(64, ge=1, description="samples per step over all processes")
    grad_accum: int = Field(1, ge=1, description="micro-batches per process and step")
    lr: float = Field(2e-4, gt=0.0, description="AdamW learning rate")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    schedule: Literal["constant", "warmup", "step", "cosine"] = Field(
        "constant", description="lr schedule (official: step, 1e-4 from 240k)"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warmup for warmup/cosine")
    drop_step: int = Field(240_000, ge=0, description="step schedule: lr drops here")
    drop_lr: float = Field(1e-4, gt=0.0, description="step schedule: lr after the drop")
    min_lr: float = Field(0.0, ge=0.0, description="cosine schedule: final lr")
    ema_decay: float = Field(
        0.9999, ge=0.0, description="EMA decay, below 1 (sampling uses the EMA); 0 = no EMA"
    )
    ema_warmup: bool = Field(True, description="ramp the EMA decay up (short runs)")
    clip_grad: float | None = Field(None, gt=0.0, description="max grad norm; none = no clip")
    compile: bool = Field(
        False, description="compile each block of the model (regional torch.compile)"
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="several processes: ddp (replicated weights) or fsdp (FSDP2 fully_shard of "
        "each block, for XL and larger); checkpoints are the same files either way",
    )
    kernels: Literal["auto", "triton", "eager"] = Field(
        "auto",
        description="fused ops (RMSNorm+adaLN, RoPE, SwiGLU, cosine losses): triton, eager, or "
        "auto = Triton on CUDA, eager elsewhere",
    )
    tf32: bool = Field(
        True,
        description="on CUDA, TF32 matmuls and convolutions (faster, ~1e-3 relative rounding); "
        "--no-tf32 keeps PyTorch's defaults (strict fp32 matmuls, TF32 cuDNN convolutions), "
        "as the official stage 2 ran",
    )
    ckpt_every: int = Field(500, ge=1, description="checkpoint every N steps")
    keep_last: int = Field(3, ge=0, description="complete checkpoints kept; 0 = all")
    log_every: int = Field(25, ge=1, description="metrics line every N steps")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="stop with an error after this many non-finite steps in a row"
    )
    image_every: int = Field(500, ge=0, description="sample grid PNG every N steps; 0 = never")
    image_steps: int = Field(16, ge=1, description="Euler steps of the sample grid")
    buffer_blocks: int | None = Field(
        None,
        ge=1,
        description="shuffle samples within this many chunks; none = as many as memory_gb holds "
        "(at least 16; a resumed run keeps its recorded value); no effect on data held in "
        "memory (shuffled sample by sample)",
    )
    prefetch: bool | None = Field(
        None,
        description="read the next batch in a background thread; none = on a GPU only (on a "
        "CPU it competes with the step's own threads)",
    )

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        return value if value is None else safe_name(value, "run name")

    @field_validator("ema_decay")
    @classmethod
    def _ema_moves(cls, value: float) -> float:
        return ema_decay_below_one(value)

    def check_schedule(self, section: str, sources: dict[str, str]) -> None:
        """Refuse lr-schedule options that the chosen schedule would silently ignore.

        Only options the user gave (flag, environment, config file) are refused: a preset's or
        the default value of an unused option is harmless. ``sources`` is the settings
        provenance (dotted keys). So is a ``warmup`` schedule the user gave with
        ``warmup_steps`` 0: it was the constant lr, recorded as a warm-up. A cosine floor above
        the lr is refused whatever its source: the "decay" would raise the lr.
        """
        schedule_from = sources.get(f"{section}.schedule", "default")
        for name, uses in SCHEDULE_OPTIONS.items():
            source = sources.get(f"{section}.{name}", "default")
            if self.schedule in uses or not user_given(source):
                continue
            refuse_ignored(
                section,
                name,
                getattr(self, name),
                source,
                f"is used only by the {' and '.join(uses)} lr schedule"
                f"{'s' if len(uses) > 1 else ''}, but the schedule is {self.schedule} (from "
                f"{schedule_from})",
                f"pass --schedule {uses[0]}"
                + (f" (or {' or '.join(uses[1:])})" if len(uses) > 1 else ""),
            )
        if self.schedule == "warmup" and self.warmup_steps == 0 and user_given(schedule_from):
            warm_from = sources.get(f"{section}.warmup_steps", "default")
            refuse_ignored(
                section,
                "schedule",
                self.schedule,
                schedule_from,
                f"ramps the lr up over {section}.warmup_steps, which is 0 (from {warm_from}), "
                "so the lr stays constant",
                "pass --warmup-steps N with N >= 1, or --schedule constant",
            )
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise ConfigError(
                f"{section}.min_lr {self.min_lr:g} is above {section}.lr {self.lr:g}: the cosine "
                f"schedule would raise the lr towards {self.min_lr:g} instead of decaying it",
                "pass a --min-lr below --lr (the final lr of the cosine decay), e.g. --min-lr 0",
            )

    def check_model_named(self, section: str, sources: dict[str, str]) -> None:
        """Refuse an ``arch`` / ``size`` / ``patch`` the user gave (flag, environment, file) that
        ``model`` overrides: ``--model tiny --size xl`` trained the tiny model, and the run
        recorded size xl. A value the model id names itself (``--model lightningdit-xl-1 --size
        xl``), the tiny model's ``--patch`` (an option of it) and a preset's values are kept."""
        if not self.model:
            return
        implied = implied_by_model(self.model)
        model_from = sources.get(f"{section}.model", "default")
        for name in MODEL_NAMED:
            source = sources.get(f"{section}.{name}", "default")
            value = getattr(self, name)
            if not user_given(source) or implied.get(name, object()) == value:
                continue
            if name == "patch" and self.model == "tiny":
                continue  # the tiny model is built with the given patch
            refuse_ignored(
                section,
                name,
                value,
                source,
                f"names a model, but {section}.model {self.model!r} (from {model_from}) is "
                "given and wins over arch, size and patch",
                "name the model you want in --model alone (e.g. lightningdit-xl-1), or drop "
                "--model to build <arch>-<size>-<patch>",
            )

    def check_terms(self, section: str, sources: dict[str, str]) -> None:
        """Refuse REPA options the user gave while REPA is off (``repa_weight`` 0, given or from
        a preset such as paper): the run would train without the alignment loss they tune. So
        are the logit-normal ``time_mu`` / ``time_sigma`` under ``time_dist`` uniform (the repa
        preset's) and ``cos_norm_floor`` with ``cos_weight`` 0: each was accepted, recorded and
        ignored. So are ``arch`` / ``size`` / ``patch`` given with a ``model`` that names
        another model (see :meth:`check_model_named`), and ``image_steps`` with ``image_every``
        0 and ``ema_warmup`` with ``ema_decay`` 0 (``check_output_options``)."""
        self.check_model_named(section, sources)
        check_output_options(self, section, sources)
        if self.time_dist != "logit_normal":
            dist_from = sources.get(f"{section}.time_dist", "default")
            for name in LOGIT_NORMAL_OPTIONS:
                source = sources.get(f"{section}.{name}", "default")
                if user_given(source):
                    refuse_ignored(
                        section,
                        name,
                        getattr(self, name),
                        source,
                        f"is used only by the logit_normal time distribution, but "
                        f"{section}.time_dist is {self.time_dist!r} (from {dist_from})",
                        "pass --time-dist logit_normal",
                    )
        if self.cos_weight == 0:
            check_term_options(
                self,
                section,
                sources,
                ("cos_norm_floor",),
                "cos_weight",
                "the 1 − cos velocity term",
                "pass --cos-weight 1 (any weight > 0 turns the term on)",
            )
        if self.repa_weight > 0:
            self._check_repa_stop(section, sources)
            return
        check_term_options(
            self,
            section,
            sources,
            REPA_OPTIONS,
            "repa_weight",
            "the REPA alignment loss",
            "pass --repa-weight 0.5 (any λ > 0 turns REPA on)",
        )

    def _check_repa_stop(self, section: str, sources: dict[str, str]) -> None:
        """Refuse a given ``repa_stop_step`` 0 under ``repa_weight`` > 0: the alignment is off
        from step 0 on, so it never runs, while the run records and its summary name REPA (the
        way to train without it is ``--repa-weight 0``)."""
        source = sources.get(f"{section}.repa_stop_step", "default")
        if self.repa_stop_step == 0 and user_given(source):
            weight_from = sources.get(f"{section}.repa_weight", "default")
            raise ConfigError(
                f"{section}.repa_stop_step = 0 (from {source}) switches REPA off before the first "
                f"step, while {section}.repa_weight = {self.repa_weight} (from {weight_from}) "
                "turns it on: the alignment would never run",
                "pass --repa-weight 0 to train without REPA, or a --repa-stop-step above 0",
            )


#: the settings that ``model`` replaces (``repackctl.dit.task.resolve_model_id``: a given model id
#: wins over ``<arch>-<size>-<patch>``)
MODEL_NAMED = ("arch", "size", "patch")


def implied_by_model(model: str) -> dict[str, Any]:
    """The ``arch`` / ``size`` / ``patch`` that a model id names itself (``lightningdit-xl-1``;
    ``tiny`` is a lightningdit of size tiny that takes ``--patch`` as an option); empty for an
    id of another form (a plugin's)."""
    if model == "tiny":
        return {"arch": "lightningdit", "size": "tiny"}
    parts = model.split("-")
    if len(parts) == 3 and parts[2].isdigit():
        return {"arch": parts[0], "size": parts[1], "patch": int(parts[2])}
    return {}


#: the options that only tune the REPA alignment loss (off when ``repa_weight`` is 0); the
#: features are its targets
REPA_OPTIONS = ("features", "repa_depth", "repa_hidden", "repa_stop_step")
#: the options of the logit-normal time distribution (unused by ``time_dist`` uniform)
LOGIT_NORMAL_OPTIONS = ("time_mu", "time_sigma")

#: lr-schedule options → the schedules that use them (``repackctl.train.schedule.lr_at``)
SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "warmup_steps": ("warmup", "cosine"),
    "drop_step": ("step",),
    "drop_lr": ("step",),
    "min_lr": ("cosine",),
}


# `--preset paper`: the official RePack-DiT-XL/1 recipe (reference/methods.md). The official
# stage 2 has no REPA, so λ = 0 here; `--repa-weight 0.5` adds it.
#: what REPA's class-conditional (``train.py``) and text-to-image (``train_t2i.py``) recipes
#: share (``train dit --preset repa``, ``train t2i --preset repa``): ``--max-train-steps``
#: 400k, ``--batch-size`` 256, AdamW (lr 1e-4, betas (0.9, 0.999), no weight decay) at a constant
#: lr, ``update_ema(decay=0.9999)`` every step from step 0 (no warm-up), ``--max-grad-norm`` 1.0,
#: ``loss.py`` SILoss (linear path, v target, uniform t, plain MSE: no cosine term), the
#: projector (``--proj-coeff`` 0.5 after ``--encoder-depth`` 8, 2048 wide), a fresh posterior
#: sample of the latent every step, and no flip (their datasets read each image as stored)
REPA_SHARED: dict[str, Any] = {
    "steps": 400_000,
    "global_batch": 256,
    "lr": 1e-4,
    "beta1": 0.9,
    "beta2": 0.999,
    "weight_decay": 0.0,
    "schedule": "constant",
    "ema_decay": 0.9999,
    "ema_warmup": False,
    "clip_grad": 1.0,
    "time_dist": "uniform",
    "time_shift": 1.0,
    "cos_weight": 0.0,
    "repa_weight": 0.5,
    "repa_depth": 8,
    "repa_hidden": 2048,
    "latent_sampling": "sample",
    "flip": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "paper": {
        "arch": "lightningdit",
        "size": "xl",
        "patch": 1,
        "steps": 320_000,
        "global_batch": 256,
        "lr": 2e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "weight_decay": 0.0,
        "schedule": "step",
        "drop_step": 240_000,
        "drop_lr": 1e-4,
        "ema_decay": 0.9999,
        "ema_warmup": False,
        "time_dist": "logit_normal",
        "time_mu": 0.0,
        "time_sigma": 1.0,
        "time_shift": 1.0,
        "cos_weight": 1.0,
        # LightningDiT transport.py: plain cosine_similarity, no floor on |v̂|
        "cos_norm_floor": 0.0,
        "class_dropout": 0.1,
        "repa_weight": 0.0,
        # the official latent cache holds ONE posterior sample per image and flip
        # (stage2/extract_features.py), drawn once and reused every epoch
        "latent_sampling": "fixed",
        "clip_grad": None,
        # fp32 eager PyTorch: stage2/train.py sets no TF32 flag (PyTorch's defaults: strict fp32
        # matmuls) and runs no fused kernels
        "kernels": "eager",
        "tf32": False,
        # the official config's ckpt_every 20000 and log_every 5 (stage2/train.py counts both in
        # optimizer updates, as we do); keep_last and the sample grids are ours (README Presets)
        "ckpt_every": 20_000,
        "log_every": 5,
        "image_every": 10_000,
    },
    # REPA (sihyun-yu/REPA train.py): SiT-XL/2, uniform t, plain velocity MSE, AdamW 1e-4
    # (0.9, 0.999), clip 1.0, EMA 0.9999, label dropout 0.1, a 3-layer 2048-wide projector after
    # block 8 of 28 with λ 0.5, constant lr, global batch 256, posterior samples of the latent,
    # no flip augmentation (REPA's dataset.py reads each image as stored).
    "repa": {
        "arch": "sit",
        "size": "xl",
        "patch": 2,
        **REPA_SHARED,
        "class_dropout": 0.1,
        # train.py's output, as `train t2i --preset repa` takes train_t2i.py's: a checkpoint
        # every --checkpointing-steps 50000 (:416), none ever deleted (:328-339); a sample grid
        # every --sampling-steps 10000 (:394) with a 50-step Euler sampler (:344-354). REPA logs
        # every step to its tracker (:371); our metrics line keeps its default, as t2i's does
        "ckpt_every": 50_000,
        "keep_last": 0,
        "image_every": 10_000,
        "image_steps": 50,
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """Defaults of ``[dit]`` keys that preset ``name`` changes."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


DitSettings.PRESETS.update(PRESETS)
