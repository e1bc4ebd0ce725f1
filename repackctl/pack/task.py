"""`repackctl pack train`: the packing autoencoder (RePack) or the PCA baseline, on cached tokens.

RePack stage 1 (guanfangdong/RePack-then-Refine ``stage1/``; ``reference/methods.md``): a per-token
KL projection C → d and an LDM-style pixel decoder, trained with L1 + LPIPS + focal-frequency +
KL + Watson-DFT + PatchGAN hinge (adaptive weight), Adam betas (0.5, 0.9). Our differences, each
deliberate:

* the frozen encoder does not run: tokens of both flips come from the cache (``pack.data``);
* every loss term is a per-sample mean (``pack.losses``), so FFL is a real term (the official
  code summed L1 but meaned FFL, silencing it); the KL weight is given in the paper's convention
  (1e-6 on per-sample sums) and converted;
* the Watson-DFT distance (``pack.watson``) masks with the original image, as the paper defines
  it (the official code swaps its inputs); like LPIPS it needs a local parameters file
  (``pack.watson_weights``) and is off, with a warning, without one;
* ``--method pca``: a closed-form float64 PCA of the cached tokens (evenly spread chunks, both
  flips, a fixed order, so the fit is deterministic) is frozen as the projection and the same
  decoder is trained on top, with no KL: the paper's baseline;
* sizes left unset follow a preset picked from the encoder's token width (``resolve_plan``):
  the paper's for DINO encoders, a small one for the built-in encoder that trains in about a
  minute on two CPU cores (with lr 1e-3: the official 1e-5 barely moves in so few steps);
* the training length is ``steps``, or ``epochs`` passes over the training images when no
  steps are given (the paper preset: the official 99 epochs), resolved once into the plan;
* each sample's flip and posterior noise ε come from its own generator, keyed by (seed, step,
  sample, repeat) (``sample_generators``), as in the DiT task; the official code draws them
  from each GPU's global RNG. So W processes train the weights of one process, to float
  rounding, without the discriminator; with it, each process computes the adaptive GAN weight
  from its own samples (and a BatchNorm discriminator normalises with their statistics).

The loop (accelerate, EMA, atomic checkpoints, bit-identical resume, NaN guard, metrics.jsonl,
TensorBoard) is ``repackctl.train.loop``; this module is the ``TrainTask`` plus the plumbing.

Legend: B batch, T tokens, C token channels, d latent channels, h×w grid, R image side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from repackctl.cache.store import DatasetEntry, features_precision, list_entries
from repackctl.data.cached import entry_labels, sample_generators, shuffle_window
from repackctl.errors import CheckpointError, ConfigError, RepackError
from repackctl.files import to_uint8, write_json_atomic
from repackctl.pack.autoencoder import AutoencoderConfig, PackAutoencoder
from repackctl.pack.data import (
    FeatureRef,
    PackData,
    check_square_grid,
    entry_content,
    locate_features,
)
from repackctl.pack.decoder import DecoderConfig
from repackctl.pack.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    check_disc_depth,
)
from repackctl.pack.encode import FEATURES_PRECISION
from repackctl.pack.load import builtin_feature_loss
from repackctl.pack.losses import (
    SE_FACTOR,
    LossConfig,
    PerceptualUnavailable,
    ReconstructionLoss,
    downscaled_pair,
    load_lpips,
    official_kl_weight,
)
from repackctl.pack.pca import PCAResult, fit_pca, token_whitening
from repackctl.pack.projection import DEFAULT_FORM, DiagonalGaussian, ProjectionConfig
from repackctl.pack.watson import WATSON_ENV, WATSON_SETTING, check_image_size, load_watson
from repackctl.paths import cache_root
from repackctl.progress import LOG_FILE, ProgressFactory, null_progress, with_log_file
from repackctl.run_lock import lock_run, released_after
from repackctl.settings import Settings
from repackctl.settings.checks import user_given
from repackctl.settings.pack import PRESETS, PackSettings
from repackctl.settings.training import check_batch_fits

if TYPE_CHECKING:
    from repackctl.train import StepOutput

# Token width from which an encoder counts as a DINO-class encoder (ViT-S has 384 channels).
GRID_SAMPLES = 8  # images in the recon grid written every image_every steps (pack.grid_images)


@dataclass
class PackPlan:
    """Every resolved choice of one pack training run (stored in the run's config)."""

    run_name: str
    method: str
    preset: str
    steps: int
    epochs: int | None  # the epochs ``steps`` was derived from; None: steps given or preset
    images: int | None  # training images the epochs were counted over
    batch_size: int
    lr: float
    disc_lr: float
    betas: tuple[float, float]
    ema_decay: float
    autoencoder: AutoencoderConfig
    discriminator: DiscriminatorConfig | None
    loss: LossConfig
    lpips_weights: str | None
    watson_weights: str | None = None  # the Watson-DFT parameters file (None: term off)
    watson_digest: str | None = None  # sha256 of its values, set when they are loaded
    tf32: bool = True  # TF32 matmuls/convolutions on CUDA (False: PyTorch's strict fp32)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "method": self.method,
            "preset": self.preset,
            "steps": self.steps,
            "epochs": self.epochs,
            "images": self.images,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "disc_lr": self.disc_lr,
            "betas": list(self.betas),
            "ema_decay": self.ema_decay,
            "autoencoder": self.autoencoder.to_dict(),
            "discriminator": self.discriminator.to_dict() if self.discriminator else None,
            "loss": self.loss.to_dict(),
            "lpips_weights": self.lpips_weights,
            "watson_weights": self.watson_weights,
            "watson_digest": self.watson_digest,
            "tf32": self.tf32,
            "notes": list(self.notes),
        }


def default_run_name(settings: Settings, encoder: str | None = None) -> str:
    """``pack-<encoder>-<method>`` (the encoder id made safe for a folder name)."""
    enc = encoder or settings.pack.encoder
    enc = "".join(c if c.isalnum() or c in "-_." else "-" for c in enc)
    return f"pack-{enc}-{settings.pack.method}"


def _scale_equivariance(weight: float, grid: int) -> float:
    """The scale-equivariance weight, refused where the latent grid cannot be halved."""
    if weight > 0 and grid % SE_FACTOR:
        raise ConfigError(
            f"pack.scale_equivariance_weight is {weight:g}, but the latent grid {grid}×{grid} "
            f"cannot be pooled ×{SE_FACTOR}",
            "set --scale-equivariance-weight 0 for an odd grid",
        )
    return weight


def _file_terms(
    cfg: PackSettings, watson_weight: float, resolution: int, notes: list[str]
) -> tuple[float, float]:
    """The ``(perceptual, watson)`` weights: each term needs a local file (LPIPS-VGG weights,
    Watson-DFT parameters); a term whose file is not given is off, with a warning in ``notes``
    (the paper preset must run on a machine without them)."""
    perceptual = cfg.perceptual_weight if cfg.lpips_weights else 0.0
    if not cfg.lpips_weights and cfg.perceptual_weight > 0:
        notes.append(
            "Warning: no LPIPS weights (pack.lpips_weights / REPACKCTL_PACK__LPIPS_WEIGHTS), so "
            "the perceptual loss is off; set it to a local LPIPS-VGG file to turn it on"
        )
    watson = watson_weight if cfg.watson_weights else 0.0
    if not cfg.watson_weights and watson_weight > 0:
        notes.append(
            f"Warning: no Watson-DFT parameters ({WATSON_SETTING} / {WATSON_ENV}), so the "
            f"Watson-DFT term (weight {watson_weight:g}) is off; set it to the official "
            "rgb_watson_fft_trial0.pth to turn it on"
        )
    if watson > 0:
        check_image_size(resolution, resolution)
    return perceptual, watson


def resolve_plan(settings: Settings, ref: FeatureRef) -> PackPlan:
    """Turn ``settings.pack`` (None = preset) and the features' shape into a ``PackPlan``."""
    cfg = settings.pack
    _, flips, tokens, width = ref.tokens_shape
    grid = check_square_grid(tokens)
    resolution = ref.entry.resolution
    preset = settings.pack.preset  # made concrete by the settings (auto → small/paper)
    p = PRESETS[preset]

    def pick(name: str) -> Any:
        value = getattr(cfg, name)
        return p[name] if value is None else value

    d = pick("latent_channels")
    kind = cfg.method
    # the official form brings the decoder's post_quant_conv; PCA has no learned projection
    form = pick("projection_form") if kind == "repack" else "folded"
    decoder = _decoder_config(cfg, pick, d, grid, resolution, form)
    whiten = kind == "repack" and bool(pick("whiten"))
    ae = AutoencoderConfig(ProjectionConfig(kind, width, d, whiten=whiten, form=form), decoder)
    gan = cfg.gan_weight
    disc = (
        DiscriminatorConfig(
            base_channels=pick("disc_channels"), n_layers=cfg.disc_layers, norm=pick("disc_norm")
        )
        if gan > 0
        else None
    )
    if disc is not None:  # before anything is written: it failed at the first GAN step
        first = max(0, pick("gan_start") - pick("disc_lead"))  # LossConfig.disc_start
        check_disc_depth(disc, resolution, "pack.disc_layers", first)
    notes: list[str] = []
    perceptual, watson = _file_terms(cfg, pick("watson_weight"), resolution, notes)
    latent_numel = d * grid * grid
    image_numel = 3 * resolution * resolution
    loss = LossConfig(
        l1=cfg.l1_weight,
        perceptual=perceptual,
        ffl=cfg.ffl_weight,
        kl=0.0 if kind == "pca" else official_kl_weight(latent_numel, image_numel, cfg.kl_weight),
        gan=gan,
        gan_start=pick("gan_start"),
        disc_lead=pick("disc_lead"),
        feature=pick("feature_weight"),
        scale_equivariance=_scale_equivariance(pick("scale_equivariance_weight"), grid),
        watson=watson,
        adaptive_gan=pick("adaptive_gan"),
    )
    lr = pick("lr")
    batch = pick("batch_size")
    steps, epochs, images = training_length(settings, ref, batch)
    if epochs is not None:
        notes.append(f"training length: {steps_line(steps, epochs, images, batch)}")
    return PackPlan(
        run_name=cfg.run or default_run_name(settings, ref.source.get("encoder")),
        method=kind,
        preset=preset,
        steps=steps,
        epochs=epochs,
        images=images,
        batch_size=batch,
        lr=lr,
        disc_lr=cfg.disc_lr or lr,
        betas=(float(cfg.betas[0]), float(cfg.betas[1])),
        ema_decay=pick("ema_decay"),
        autoencoder=ae,
        discriminator=disc,
        loss=loss,
        lpips_weights=cfg.lpips_weights,
        watson_weights=cfg.watson_weights if watson > 0 else None,
        tf32=preset != "paper",  # the official stage 1 ran PyTorch's default strict fp32
        notes=notes,
    )


def _pixel_shuffle_of(cfg: Any, factor: int) -> int:
    """The decoder's pixel shuffle for ``cfg`` (``settings.pack``) at the upsampling ``factor``:
    a given value as is (``DecoderConfig`` checks it), else the preset's, at most ``factor``."""
    return cfg.pixel_shuffle or min(PRESETS[cfg.preset]["pixel_shuffle"], factor)


def _decoder_config(
    cfg: Any, pick: Callable[[str], Any], d: int, grid: int, resolution: int, form: str
) -> DecoderConfig:
    """The decoder of ``resolve_plan``: ``pick`` gives a setting or its preset value."""
    factor = resolution // grid
    # attention at decoder sides (the paper's 16² is its latent grid); others: _check_new_run
    return DecoderConfig(
        latent_channels=d,
        latent_size=grid,
        resolution=resolution,
        ch=pick("ch"),
        ch_mult=tuple(cfg.ch_mult) if cfg.ch_mult is not None else None,
        num_res_blocks=pick("num_res_blocks"),
        attn_resolutions=tuple(pick("attn_resolutions")),
        max_groups=pick("norm_groups"),
        pixel_shuffle=_pixel_shuffle_of(cfg, factor),
        post_quant_conv=form == "official",
    )


def steps_for_epochs(epochs: int, samples: int, batch_size: int) -> int:
    """Updates of ``epochs`` passes over ``samples`` at ``batch_size``: ceil(epochs × N / B)."""
    return math.ceil(epochs * samples / batch_size)


def steps_line(steps: int, epochs: int, samples: int, batch_size: int, what: str = "images") -> str:
    """``99 epochs × 1281167 images / batch 32 = 3963736 steps`` (printed and logged)."""
    return f"{epochs} epochs × {samples} {what} / batch {batch_size} = {steps} steps"


def training_length(
    settings: Settings, ref: FeatureRef, batch_size: int
) -> tuple[int, int | None, int | None]:
    """``(steps, epochs, images)`` of a pack run: a given ``steps`` wins; else ``epochs`` passes
    over the entry's usable training images (``pack.data.valid_indices``); else the preset's
    steps. ``epochs`` and ``images`` are None when the steps were not derived from epochs."""
    from repackctl.pack.data import valid_indices

    cfg = settings.pack
    preset = PRESETS[cfg.preset]
    if cfg.steps is not None:
        return cfg.steps, None, None
    epochs = cfg.epochs if cfg.epochs is not None else preset.get("epochs")
    if epochs is None:
        if preset.get("steps") is None:
            raise ConfigError(
                "pack.steps and pack.epochs are both unset: the training length is unknown",
                "pass --steps N or --epochs N",
            )
        return preset["steps"], None, None
    images = len(valid_indices(ref.entry, ref.feats))
    return steps_for_epochs(epochs, images, batch_size), epochs, images


# ---------------------------------------------------------------------------- PCA


def fit_token_pca(data: PackData, components: int, max_samples: int | None) -> PCAResult:
    """Float64 PCA of the tokens of both flips of up to ``max_samples`` samples (fixed order)."""
    blocks = data.token_blocks(max_samples)  # (b, F, T, C) float16 each
    return fit_pca((torch.from_numpy(tokens) for tokens in blocks), components)


def fit_whitening(
    data: PackData, width: int, max_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The repack projection's token whitening ``(mean, matrix)``, from the same sample of
    tokens as the PCA (deterministic: every process of a run fits the same numbers)."""
    return token_whitening(fit_token_pca(data, width, max_samples))


# ---------------------------------------------------------------------------- per-sample draws

_SAMPLE_KEY = 0xAE  # tags the per-sample generators of this stage


def latent_sample(posterior: DiagonalGaussian, eps: torch.Tensor | None) -> torch.Tensor:
    """z = mean + std·eps (B, d, h, w), as ``posterior.sample()`` computes it; the mode of a
    deterministic posterior. ``eps`` None (a batch not made by ``PackTask.get_batch``): drawn
    from the global torch RNG, which differs with the process count."""
    if posterior.deterministic:
        return posterior.mean
    if eps is None:
        return posterior.sample()
    return posterior.mean + posterior.std * eps.to(posterior.mean.dtype)  # (B, d, h, w)


# ---------------------------------------------------------------------------- the task


class PackTask:
    """``TrainTask`` of stage 1: modules ``model`` (PackAutoencoder) and ``disc`` (PatchGAN)."""

    def __init__(
        self,
        plan: PackPlan,
        data: PackData,
        ref: FeatureRef,
        pca: PCAResult | None = None,
        lpips: nn.Module | None = None,
        whitening: tuple[torch.Tensor, torch.Tensor] | None = None,
        watson: nn.Module | None = None,
        seed: int = 0,
        grid_images: int = GRID_SAMPLES,
    ) -> None:
        self.plan = plan
        self.data = data
        self.ref = ref
        self.seed = seed  # keys each sample's flip and posterior noise (``sample_generators``)
        self.pca = pca
        self.whitening = whitening
        self.lpips = lpips
        self.watson = watson
        self.loss = ReconstructionLoss(LossConfig(gan=0.0, perceptual=0.0))  # set by build()
        # the first ``grid_images`` samples, originals over reconstructions (``on_images``)
        self.grid_positions = np.arange(min(grid_images, len(data)))

    # -- TrainTask -------------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        model = PackAutoencoder.from_config(self.plan.autoencoder)
        if self.plan.method == "pca":
            if self.pca is None:
                raise ConfigError("the PCA method needs a fitted PCA", "fit it with fit_token_pca")
            model.projection.set_fit(self.pca)  # frozen buffers: nothing of it is trained
        projection = self.plan.autoencoder.projection
        if projection.whiten:
            if self.whitening is None:  # not given (run_pack_train passes it): all the tokens
                self.whitening = fit_whitening(self.data, projection.in_channels, None)
            model.projection.set_whitening(*self.whitening)  # fixed buffers, never trained
        modules: dict[str, nn.Module] = {"model": model}
        disc = None
        if self.plan.discriminator is not None:
            disc = PatchDiscriminator(self.plan.discriminator)
            modules["disc"] = disc
        features = None
        if self.plan.loss.feature > 0:  # the frozen built-in encoder, at the images' size
            features = builtin_feature_loss(self.ref.entry.resolution)
        self.loss = ReconstructionLoss(
            self.plan.loss,
            perceptual=self.lpips,
            discriminator=disc,
            features=features,
            watson=self.watson,
        )
        return modules

    def optimizers(self) -> dict[str, Any]:
        from repackctl.train import OptimizerSpec

        # overlap=False: the step calls the autoencoder's parts (encode, decode twice with scale
        # equivariance, the last layer for the adaptive GAN weight), not one forward, which DDP's
        # reducer cannot follow; the trainer averages its grads once per step instead
        specs = {
            "gen": OptimizerSpec(("model",), lr=self.plan.lr, betas=self.plan.betas, overlap=False)
        }
        if self.plan.discriminator is not None:
            specs["disc"] = OptimizerSpec(
                ("disc",), lr=self.plan.disc_lr, betas=self.plan.betas, overlap=False
            )
        return specs

    def num_samples(self) -> int:
        return len(self.data)

    def get_batch(
        self,
        indices: np.ndarray,
        step: int,
        generator: np.random.Generator,
        repeats: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokens, images and flips of ``indices`` and, for the sampled (repack) posterior, its
        noise ``eps`` (B, d, h, w), each drawn from the sample's own generator
        (``sample_generators``, not the micro-batch's ``generator``): the same draws for any
        number of processes or micro-batches."""
        rngs = sample_generators(self.seed, step, indices, _SAMPLE_KEY, repeats)
        flips = np.array([r.integers(self.data.flips) for r in rngs], dtype=np.int64)  # (B,)
        batch = self.data.get(indices, flips=flips)
        if self.plan.method != "pca":  # the PCA projection is deterministic: no noise
            shape = (self.plan.autoencoder.projection.latent_channels, self.ref.grid, self.ref.grid)
            eps = [r.standard_normal(shape, dtype=np.float32) for r in rngs]  # (d, h, w) each
            batch["eps"] = torch.from_numpy(np.stack(eps))  # (B, d, h, w)
        return batch

    def training_step(self, modules: dict[str, nn.Module], batch: dict, step: int) -> StepOutput:
        from repackctl.train import StepOutput

        model = modules["model"]
        tokens, target = batch["tokens"], batch["images"]  # (B, T, C), (B, 3, R, R)
        if self.lpips is not None and self.lpips.shift.device != target.device:
            self.lpips.to(target.device)
        if self.watson is not None and self.watson.phase_mask.device != target.device:
            self.watson.to(target.device)
        features = self.loss.features
        if features is not None and features.encoder_device() != target.device:
            features.to(target.device)
        posterior = model.encode(tokens)
        z = latent_sample(posterior, batch.get("eps"))  # (B, d, h, w)
        recon = model.decode(z)  # (B, 3, R, R)
        pair = None
        if self.plan.loss.scale_equivariance > 0:
            pair = downscaled_pair(model.decode, z, target)  # (B, 3, R/2, R/2) each
        gen = self.loss.generator_loss(
            target, recon, posterior, step=step, last_layer=model.last_layer, downscaled=pair
        )
        logs = dict(gen.logs)
        if not posterior.deterministic:
            logs["latent/std_mean"] = posterior.std.detach().mean()
            logs["latent/mean_abs"] = posterior.mean.detach().abs().mean()
        losses = {"gen": gen.total}
        if "disc" in modules and self.loss.disc_active(step):  # from gan_start − disc_lead
            d = self.loss.discriminator_loss(target, recon, step=step)
            losses["disc"] = d.total
            logs.update(d.logs)
        return StepOutput(losses, logs)

    def on_images(self, modules: dict, ema: nn.Module, step: int, run_dir: Path) -> Path:
        """Originals over EMA reconstructions (posterior mean) of fixed samples, as a PNG."""
        from repackctl.metrics.recon import save_grid

        batch = self.data.get(self.grid_positions)  # flip 0
        device = next(ema.parameters()).device
        with torch.no_grad():
            recon, _ = ema(batch["tokens"].to(device), sample=False)  # (B, 3, R, R)
        rows = [to_uint8(batch["images"]), to_uint8(recon)]
        path = Path(run_dir) / "images" / f"step-{step:07d}.png"
        save_grid(rows, path, ["original", "recon"])
        return path

    def state_extra(self) -> dict[str, Any]:
        """The pack-run contract read by ``pack.io.load_pack`` (and by ``train dit``)."""
        return {
            "stage": "pack",
            "autoencoder_config": self.plan.autoencoder.to_dict(),
            "method": self.plan.method,
            "encoder": self.ref.encoder_attrs,
            "cache": self.ref.cache,
            # what `pack encode` refuses to differ (pack.encode.check_features_precision)
            FEATURES_PRECISION: features_precision(dict(self.ref.feats.attrs)),
            # which data, wherever the cache lies: a resume compares this, not the cache root
            "content": {**self.ref.content, "rows": self.data.rows_digest},
            "source": {k: v for k, v in self.ref.source.items() if k != "resolution_given"}
            | {"resolution_given": self.ref.source.get("resolution_given")},
            "resolution": self.ref.entry.resolution,
            "latent_shape": [self.plan.autoencoder.projection.latent_channels]
            + [self.ref.grid] * 2,
            "num_classes": int(self.ref.entry.attrs.get("num_classes", 0) or 0),
            "plan": self.plan.to_dict(),
        }

    def load_state_extra(self, extra: dict[str, Any]) -> None:
        self.resumed_extra = extra

    def checkpoints_in_use(self, run_dir: Path) -> dict[str, list[str]]:
        """The engine's rotation keeps these (:func:`checkpoints_in_use`, with the latents
        groups of this run's cache), asked at each save: a DiT may start on this run's latents
        while it trains, and `pack encode` may write latents with one of its checkpoints."""
        return checkpoints_in_use(Path(run_dir), [cache_root(self.ref.entry.root)])


# ---------------------------------------------------------------------------- run


# LossConfig field → the pack setting that sets it (for the hint of a refused resume)
LOSS_SETTINGS = {
    "l1": "l1_weight",
    "perceptual": "perceptual_weight",
    "ffl": "ffl_weight",
    "kl": "kl_weight",
    "gan": "gan_weight",
    "gan_start": "gan_start",
    "disc_lead": "disc_lead",
    "feature": "feature_weight",
    "scale_equivariance": "scale_equivariance_weight",
    "watson": "watson_weight",
}


def _check_resume(
    run_dir: Path, latest: Path | None, task_extra: dict[str, Any], allow: list[str] | None = None
) -> list[str]:
    """Refuse to resume a run that was trained on other features, with another model, or with
    other loss weights (a preset that changed between versions is invisible to the settings
    layer, which refills preset values: ``pack.feature_weight`` came to ``small`` later).
    ``latest``: the checkpoint to resume (None: a new run). Returns notes for the log."""
    from repackctl.train.checkpoint import read_state

    if latest is None:
        return []
    old = read_state(latest).get("extra", {})
    _check_resume_form(run_dir.name, old, task_extra)
    _check_resume_shuffle(run_dir.name, old, task_extra)
    for key in ("stage", "method", "autoencoder_config"):
        if _comparable(key, old.get(key)) != _comparable(key, task_extra.get(key)):
            raise CheckpointError(
                f"run {run_dir.name} was trained with another {key} "
                f"({old.get(key)!r} vs now {task_extra.get(key)!r})",
                "use the same settings to resume it, or pick a new run name with --name",
            )
    notes = _check_resume_data(run_dir.name, old, task_extra)
    _check_resume_loss(run_dir.name, old.get("plan"), task_extra["plan"], allow or [])
    _check_resume_discriminator(run_dir.name, old.get("plan"), task_extra["plan"])
    _check_resume_tf32(run_dir.name, old.get("plan"), task_extra["plan"], allow or [])
    _check_resume_watson(run_dir.name, old.get("plan"), task_extra["plan"], allow or [])
    return notes


def _comparable(key: str, value: Any) -> Any:
    """An autoencoder config as this version writes it (a run recorded before a field existed,
    e.g. the projection ``form``, gets its default: what it was built with); others as they are."""
    if key != "autoencoder_config" or not isinstance(value, dict):
        return value
    try:
        return AutoencoderConfig.from_dict(value).to_dict()
    except (ConfigError, TypeError, ValueError):
        return value  # unreadable: compared as stored, so refused as another config


def trained_form(extra: dict[str, Any]) -> str | None:
    """The projection form a pack checkpoint (its ``extra``) was built with: ``folded`` where
    it records none (the run started before ``pack.projection_form``); None for PCA."""
    projection = (extra.get("autoencoder_config") or {}).get("projection") or {}
    if projection.get("kind", "repack") != "repack":
        return None
    return projection.get("form", DEFAULT_FORM)


def _check_resume_form(run: str, old: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume in another projection form than the run was trained with: its weights
    are another parameterisation (and the decoder's ``post_quant_conv`` comes with it)."""
    before, form = trained_form(old), trained_form(now)
    if before is None or form is None or before == form:
        return
    raise CheckpointError(
        f"run {run} was trained with the {before} projection form, now {form}",
        f"resume it with --projection-form {before} as it was started, or pick a new run name "
        "with --name",
    )


def _check_resume_shuffle(run: str, old: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume with another decoder pixel shuffle than the run was trained with (its
    decoder has other levels); one recorded before the setting had none (1)."""

    def shuffle(extra: dict[str, Any]) -> int:
        decoder = (extra.get("autoencoder_config") or {}).get("decoder") or {}
        return int(decoder.get("pixel_shuffle", 1))

    before, after = shuffle(old), shuffle(now)
    if before != after:
        raise CheckpointError(
            f"run {run} was trained with pack.pixel_shuffle {before}, now {after}",
            f"resume it with --pixel-shuffle {before} (the decoder it was trained with), or pick "
            "a new run name with --name",
        )


# DiscriminatorConfig field → the pack setting that sets it (for the hint of a refused resume)
DISC_SETTINGS = {"norm": "disc_norm", "base_channels": "disc_channels", "n_layers": "disc_layers"}


def _check_resume_discriminator(
    run: str, old_plan: dict[str, Any] | None, plan: dict[str, Any]
) -> None:
    """Refuse another discriminator than the run was trained with (its weights and BatchNorm
    buffers would not fit; a preset may have changed: paper picks BatchNorm since 0.3). Older
    checkpoints without a stored plan are not compared; missing fields read as their defaults."""
    if not isinstance(old_plan, dict) or not old_plan.get("discriminator"):
        return
    if not plan.get("discriminator"):
        return  # the GAN is off now: the loss check names gan_weight
    before = DiscriminatorConfig.from_dict(old_plan["discriminator"]).to_dict()
    for key, value in plan["discriminator"].items():
        if before.get(key) == value:
            continue
        setting = DISC_SETTINGS.get(key, key)
        raise CheckpointError(
            f"run {run} was trained with discriminator {key} = {before.get(key)!r}, now {value!r}",
            f"resume it with --{setting.replace('_', '-')} {before.get(key)} as it was started "
            "(a preset may have changed), or pick a new run name with --name",
        )


def _check_resume_tf32(
    run: str, old_plan: dict[str, Any] | None, plan: dict[str, Any], allow: list[str]
) -> None:
    """Refuse to switch TF32 within a run (a run recorded before the plan had ``tf32`` ran
    with it on): the paper preset now trains in PyTorch's strict fp32, as the official code."""
    if not isinstance(old_plan, dict) or "steps" not in old_plan:
        return
    before = bool(old_plan.get("tf32", True))
    if before == plan["tf32"] or {"all", "tf32", "pack.tf32"} & set(allow):
        return
    state = {True: "on", False: "off"}
    raise CheckpointError(
        f"run {run} was trained with TF32 matmuls {state[before]} on CUDA, now "
        f"{state[plan['tf32']]} (the {plan['preset']} preset changed)",
        "pass --allow-change tf32 to continue it with the new precision, or pick a new run "
        "name with --name",
    )


def _check_resume_watson(
    run: str, old_plan: dict[str, Any] | None, plan: dict[str, Any], allow: list[str]
) -> None:
    """Refuse other Watson-DFT parameters than the run was trained with, told apart by their
    values (a moved or renamed file with the same values resumes). Only compared when both the
    run and this invocation use the term (its weight is compared by ``_check_resume_loss``)."""
    if not isinstance(old_plan, dict):
        return
    before, now = old_plan.get("watson_digest"), plan.get("watson_digest")
    if before is None or now is None or before == now:
        return
    if {"all", "watson_weights", "pack.watson_weights"} & set(allow):
        return
    raise CheckpointError(
        f"run {run} was trained with other Watson-DFT parameters ({WATSON_SETTING} "
        f"{old_plan.get('watson_weights')}, sha256 {before[:12]}…) than {plan['watson_weights']} "
        f"(sha256 {now[:12]}…)",
        "resume it with the parameters file it was started with, pass --allow-change "
        "watson_weights, or pick a new run name with --name",
    )


# the parts of ``state_extra()["content"]``, as an error names them
CONTENT_WORDS = {"entry": "images", "features": "features", "rows": "sample data"}


def _check_resume_data(run: str, old: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The same cache entry and features as the run was trained on, told apart by name and
    content (``pack.data.entry_content``), not by the cache root: a copied or moved cache
    resumes, another entry under the same name is refused."""
    was, cache = old.get("cache") or {}, now["cache"]
    for key in ("entry", "features"):
        if was.get(key) != cache[key]:
            raise CheckpointError(
                f"run {run} was trained on cache {key} {was.get(key)!r}, not {cache[key]!r}",
                f"resume it with --{key} {was.get(key)} (the data it was trained on), or pick a "
                "new run name with --name",
            )
    root, old_root = cache["root"], was.get("root")
    recorded = old.get("content") or _content_at(old_root, was)
    if recorded is None:  # a checkpoint older than content digests, its cache gone or moved
        return [
            f"resume: the run's cache root {old_root} no longer holds {cache['entry']}; its entry "
            f"and features in {root} are taken by name (the checkpoint records no content digest)"
        ]
    differ = [k for k in CONTENT_WORDS if k in recorded and recorded[k] != now["content"][k]]
    if differ:
        what = " and ".join(CONTENT_WORDS[k] for k in differ)
        where = "" if old_root == root else f" (in {old_root})"
        back = "" if old_root == root else f"pass --cache {old_root} (where it was trained), or "
        raise CheckpointError(
            f"cache entry {cache['entry']} in {root} holds other {what} than run {run} was "
            f"trained on{where} (the content digests the run recorded differ)",
            f"{back}train a new run on this data with --name NEW-RUN",
        )
    if old_root != root:
        return [f"resume: cache {old_root} → {root} (same entry and features, same content)"]
    return []


def _content_at(root: str | None, cache: dict[str, Any]) -> dict[str, str] | None:
    """``entry_content`` of the run's entry where an older checkpoint recorded it (such a
    checkpoint has no digest of its own), or None when that cache is gone or unreadable."""
    if not root or "entry" not in cache or "features" not in cache:
        return None
    try:
        if cache["entry"] not in list_entries(root):
            return None
        entry = DatasetEntry.open(root, cache["entry"])
        return entry_content(entry, entry.features(cache["features"]))
    except (RepackError, OSError, ValueError, KeyError):
        return None


def _check_resume_loss(
    run: str, old_plan: dict[str, Any] | None, plan: dict[str, Any], allow: list[str]
) -> None:
    """Refuse changed loss weights unless ``--allow-change`` names them (older checkpoints
    without a stored plan are not compared; missing weights read as their old defaults)."""
    if not isinstance(old_plan, dict) or "loss" not in old_plan:
        return
    before = LossConfig.from_dict(old_plan["loss"]).to_dict()
    for key, value in plan["loss"].items():
        setting = LOSS_SETTINGS.get(key, key)
        # the names --allow-change takes (as repackctl.settings.resume.reconcile reads them)
        if before.get(key) == value or {"all", setting, f"pack.{setting}"} & set(allow):
            continue
        flag = f"--{setting.replace('_', '-')}"
        if key in SETTING_IS_LOSS_VALUE:  # the value to give is the one recorded
            flag += f" {before.get(key)}"
        raise CheckpointError(
            f"run {run} was trained with loss weight {key} = {before.get(key)!r}, now {value!r}",
            f"resume it with {flag} as it was started (a preset may have changed), pass "
            f"--allow-change {setting}, or pick a new run name with --name",
        )


#: loss fields whose setting's value is the field's (not scaled by the latent's or the image's
#: size, as kl and scale_equivariance are, nor switched off without a file, as watson is)
SETTING_IS_LOSS_VALUE = ("l1", "perceptual", "ffl", "gan", "gan_start", "disc_lead", "feature")


def _load_lpips(plan: PackPlan) -> nn.Module | None:
    if plan.loss.perceptual <= 0 or not plan.lpips_weights:
        return None
    paths = [p.strip() for p in plan.lpips_weights.split(",") if p.strip()]
    try:
        return load_lpips(paths if len(paths) > 1 else paths[0])
    except PerceptualUnavailable as e:
        raise ConfigError(e.message, e.hint) from None


def _load_watson(plan: PackPlan) -> nn.Module | None:
    """The Watson-DFT distance of a plan that uses it; records its parameters' digest in the
    plan (so the run's checkpoints tell parameter files apart)."""
    if plan.loss.watson <= 0 or not plan.watson_weights:
        return None
    watson = load_watson(plan.watson_weights)
    plan.watson_digest = watson.digest()
    return watson


def _resume(
    settings: Settings, record: dict[str, Any] | None
) -> tuple[Any, Any, list[str], Path | None]:
    """An existing run resumes from its stored settings (``repackctl.settings.resume``); also
    returns its newest checkpoint that verifies (None: a new run), looked up once here: each
    lookup hashes every file of the checkpoint (and reports one it skips)."""
    from repackctl.paths import run_dir as run_dir_of
    from repackctl.settings.resume import keep_started_values, resume_settings
    from repackctl.train.checkpoint import (
        checkpoint_to_resume,
        read_state,
        restore_interrupted_resaves,
    )

    name = settings.pack.run or default_run_name(
        settings, locate_features(settings).source.get("encoder")
    )
    record = _typed_as_stored(run_dir_of(settings.runs, name), record)
    settings, record, rec = resume_settings(
        run_dir_of(settings.runs, name), settings, record, "pack"
    )
    restore_interrupted_resaves(run_dir_of(settings.runs, name))
    latest = checkpoint_to_resume(run_dir_of(settings.runs, name))  # none usable: refused
    lines = [f"resume: {line}" for line in rec.lines()] if rec else []
    extra = read_state(latest).get("extra", {}) if latest is not None else {}  # {}: a new run
    settings, pinned = _recorded_data(settings, extra, record, name)
    settings, record, kept = _keep_trained_model(settings, record, extra)
    # values a default gave the run and this version's default changed stay as it started
    settings, record, started = keep_started_values(
        run_dir_of(settings.runs, name), settings, record, "pack", STARTED_WITHOUT
    )
    return settings, record, lines + pinned + kept + [f"resume: {line}" for line in started], latest


# pack settings a run's stored record may lack (it started before they existed), with the value
# such a run trained with: its discriminator started with the generator's GAN term
STARTED_WITHOUT: dict[str, Any] = {"disc_lead": 0}


def _typed_as_stored(run_dir: Path, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``record`` (this invocation's settings record) with a ``--weights`` given now as the
    relative path the run's stored settings hold where both name one file from here: runs
    before ``repackctl.settings.pack`` recorded a file by its absolute path kept it as typed,
    and the same ``--weights`` typed again (now made absolute) was refused as a change."""
    from repackctl.settings.resume import stored_record

    values = (record or {}).get("values") or {}
    now = (values.get("pack") or {}).get("weights")
    if record is None or not isinstance(now, str) or not Path(now).is_absolute():
        return record
    stored = stored_record(run_dir, "pack") if (run_dir / "config.json").is_file() else None
    was = ((stored or {}).get("values") or {}).get("pack")
    was = was.get("weights") if isinstance(was, dict) else None
    if not isinstance(was, str) or Path(was).expanduser().is_absolute():
        return record
    if os.path.abspath(Path(was).expanduser()) != now:
        return record
    return {**record, "values": {**values, "pack": {**values["pack"], "weights": was}}}


def _keep_trained_model(
    settings: Settings, record: dict[str, Any] | None, extra: dict[str, Any]
) -> tuple[Settings, dict[str, Any] | None, list[str]]:
    """A resumed run keeps the model form its checkpoint was built with where no layer gives one
    now: a repack run started before ``pack.projection_form`` existed trained the folded form
    (the paper preset's official form would not fit its weights), and a run started before
    ``pack.pixel_shuffle`` existed has the conv decoder up to the full resolution (the small
    preset's 4 would not fit them). A value given now that differs is refused by the resume
    checks (``_check_resume_form``, ``_check_resume_shuffle``). ``extra``: the newest
    checkpoint's (empty for a new run)."""
    from repackctl.settings.resume import given

    if not extra:
        return settings, record, []
    cfg = settings.pack
    decoder = (extra.get("autoencoder_config") or {}).get("decoder") or {}
    trained = {"pixel_shuffle": (decoder.get("pixel_shuffle", 1), "have 1 (none)")}
    if cfg.method == "repack":
        trained["projection_form"] = (trained_form(extra), "are folded")
    sources = dict((record or {}).get("sources") or {})
    kept: dict[str, Any] = {}
    lines = []
    for name, (before, old_runs) in trained.items():
        key = f"pack.{name}"
        if name == "pixel_shuffle" and decoder.get("latent_size"):  # the run's own factor
            now = _pixel_shuffle_of(cfg, decoder["resolution"] // decoder["latent_size"])
        else:
            now = getattr(cfg, name)
            now = PRESETS[cfg.preset][name] if now is None else now
        if given(sources, key) or before is None or before == now:
            continue
        kept[name] = before
        lines.append(
            f"resume: {key}: kept {before!r}, the value the run was trained with "
            f"({sources.get(key, 'the preset')} now gives {now!r}; runs started before the "
            f"setting existed {old_runs})"
        )
    if not kept:
        return settings, record, []
    if record is not None:
        values = dict(record.get("values") or {})
        values["pack"] = {**(values.get("pack") or {}), **kept}
        sources.update({f"pack.{name}": "stored run config" for name in kept})
        record = {**record, "values": values, "sources": sources}
    pack = cfg.model_copy(update=kept, deep=True)
    return settings.model_copy(update={"pack": pack}), record, lines


def _recorded_data(
    settings: Settings, extra: dict[str, Any], record: dict[str, Any] | None, run: str
) -> tuple[Settings, list[str]]:
    """A resume takes the cache entry and features its checkpoint records (``extra``: the newest
    checkpoint's, empty for a new run) where the data it names are the data it recorded, instead
    of working the features id out again: that id depends on the seed where the encoder's
    weights are drawn from it (``patchpix``), so a resume with ``--allow-change seed`` was
    refused for features never extracted, not by the engine for what a seed changes (the order
    of samples, ``repackctl.train.trainer.order_changed``). One that names no data (no
    --entry/--features/--data/…, now or at the start) takes the source the run recorded too,
    instead of guessing the newest features again (an unrelated extract since then would
    change them). A recorded
    ``--weights`` file is read by :func:`repackctl.pack.data.recorded_weights` (a relative path
    of an older run only from the folder it names the recorded file in)."""
    from repackctl.pack.data import SOURCE_KEYS, recorded_weights
    from repackctl.settings.checks import GIVEN_LAYERS
    from repackctl.settings.resume import given

    cfg = settings.pack
    cache, source = extra.get("cache") or {}, extra.get("source") or {}
    same_split = source.get("split", cfg.split) == cfg.split
    if not (cache.get("entry") and cache.get("features") and same_split):
        return settings, []
    sources = (record or {}).get("sources") or {}
    named = SOURCE_KEYS & cfg.model_fields_set
    pack = cfg.model_copy(deep=True)
    typed = given(sources, "pack.weights", GIVEN_LAYERS)
    if "weights" in source and not typed and (not named or "weights" in named):
        pack.weights = weights = recorded_weights(extra, run)  # refused where unreadable
    else:
        try:
            weights = recorded_weights(extra, run)
        except ConfigError:  # typed now: the file it names is the one read
            weights = source.get("weights")
    if named:
        return _same_data(settings, pack, extra, weights)
    pack.entry, pack.features = cache["entry"], cache["features"]
    for key in ("encoder", "layer", "data", "num"):
        if key in source and source[key] != getattr(pack, key):
            setattr(pack, key, source[key])  # as the run recorded them (hints, encode)
    if source.get("resolution_given") is not None:
        pack.resolution = source["resolution_given"]
    note = f"resume: using the run's cache entry {pack.entry} / {pack.features}"
    return settings.model_copy(update={"pack": pack}), [note]


def _same_data(
    settings: Settings, pack: Any, extra: dict[str, Any], weights: Any
) -> tuple[Settings, list[str]]:
    """``settings`` with ``pack`` (the resumed run's settings that name its data), and the entry
    and features the run recorded where those name the data it recorded (the source keys of
    ``extra``; ``weights``: its weights file as read here), whatever the seed; other data are
    left to the resume checks to refuse."""
    from repackctl.pack.data import _source_settings

    settings = settings.model_copy(update={"pack": pack})
    if pack.entry or pack.features:
        return settings, []
    cache, recorded = extra["cache"], extra["source"]
    now = _source_settings(settings)
    keys = ("encoder", "layer", "data", "split", "resolution", "num")
    if any(recorded.get(k) != now[k] for k in keys) or weights != now["weights"]:
        return settings, []
    pack = pack.model_copy(update={"entry": cache["entry"], "features": cache["features"]})
    return settings.model_copy(update={"pack": pack}), []


@released_after()
def run_pack_train(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    config_record: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume) the packing autoencoder named by ``settings.pack``; returns the run dir."""
    from repackctl.paths import run_dir as run_dir_of
    from repackctl.runtime import resolve_device
    from repackctl.train import TrainConfig, train
    from repackctl.train.checkpoint import latest_checkpoint

    settings, config_record, resumed, latest = _resume(settings, config_record)
    cfg = settings.pack
    _check_term_files(cfg, (config_record or {}).get("sources") or {})  # before data is read
    ref = locate_features(settings)
    plan = resolve_plan(settings, ref)
    run_dir = run_dir_of(settings.runs, plan.run_name)
    if latest is not None and latest.parent.parent != run_dir:  # named otherwise after resume
        latest = latest_checkpoint(run_dir)
    sources = (config_record or {}).get("sources") or {}
    if latest is None:
        _check_new_run(plan, sources)  # before anything is read in bulk or written
        _check_batch(plan, ref, sources)
    data = PackData(ref.entry, ref.feats, cfg.in_memory, settings.memory_gb)
    labels = entry_labels(ref.entry, data.indices)  # the shuffle's class check; never the fill
    log = resumed + ([ref.note] if ref.note else []) + list(plan.notes)
    log += _grid_notes(cfg, len(data), ref.entry.name, sources, latest is None)
    lpips = _load_lpips(plan)
    watson = _load_watson(plan)  # before state_extra: the plan records its digest

    # the contract part of state_extra, to compare with an existing run before anything starts
    task_extra = PackTask(plan, data, ref).state_extra()
    notes = _check_resume(run_dir, latest, task_extra, cfg.allow_change)
    log += notes + _resume_notes(plan, latest) + _gan_notes(plan) + _ema_notes(plan, sources)
    if _nothing_to_train(plan.steps, latest, log, progress):
        return run_dir  # shown as it is: nothing in the run folder changes but train.lock
    progress = with_log_file(progress, run_dir / LOG_FILE)
    pca = _pca_fit(plan, data, cfg.pca_samples, latest, run_dir, log)
    whitening = _whitening_fit(plan, data, cfg.pca_samples, latest, log)
    task = PackTask(
        plan,
        data,
        ref,
        pca=pca,
        lpips=lpips,
        whitening=whitening,
        watson=watson,
        seed=settings.seed,
        grid_images=cfg.grid_images,
    )
    resolve_device(settings.device)  # an unknown device is a ConfigError before training
    # same-named pack settings map onto the engine; the preset plan resolves the rest
    config = TrainConfig.from_settings(
        settings,
        cfg,
        run_dir,
        sources=(config_record or {}).get("sources"),
        steps=plan.steps,
        global_batch=plan.batch_size,
        lr=plan.lr,
        betas=plan.betas,
        ema_decay=plan.ema_decay,
        ema_warmup=True,
        tf32=plan.tf32,  # paper: off, PyTorch's strict fp32 matmuls as the official stage 1
        block=ref.entry.chunk,
        buffer_blocks=shuffle_window(
            data,
            cfg.buffer_blocks,
            run_dir,
            block=ref.entry.chunk,
            memory_gb=settings.memory_gb,
            seed=settings.seed,
            labels=labels,
            batch=plan.batch_size,
        ),
        extra={"stage": "pack", "plan": plan.to_dict(), "settings": config_record},
    )
    train(task, config, progress, log)  # logged once the engine accepted the resume
    return run_dir


def checkpoints_in_use(run_dir: Path, cache_roots: Sequence[str] = ()) -> dict[str, list[str]]:
    """The step folders of the pack run ``run_dir`` that other runs decode with (DiT, refiner
    and t2i runs, trained, training or imported: ``runs.dependent_runs``), or that latents
    groups of the caches ``cache_roots`` were encoded with (:func:`latents_in_use`: those
    latents are decoded with it), each with the names of those runs or groups. A record names
    its pack checkpoint by path and by pack id (run and step), and only when it names this run
    as `runs info` and `runs rm` find it (``runs.pack_records_naming``: not the latents of an
    earlier run of this name, whose weights were others)."""
    from repackctl.run_files import pack_id_run_step
    from repackctl.runs import dependent_runs, pack_records_naming
    from repackctl.train.checkpoint import checkpoints_dir, step_dir_name

    used: dict[str, list[str]] = {}
    for dep in dependent_runs(run_dir):
        for pack in pack_records_naming(run_dir.parent / dep.name, run_dir):
            names = set()
            recorded = pack.get("checkpoint")
            if isinstance(recorded, str) and Path(recorded).parent.parent.name == run_dir.name:
                names.add(Path(recorded).name)
            pack_id = pack.get("pack_id")
            run, step = pack_id_run_step(pack_id if isinstance(pack_id, str) else None)
            if run == run_dir.name and step is not None:
                names.add(step_dir_name(step))
            for name in names:
                if not (checkpoints_dir(run_dir) / name).is_dir():
                    continue  # gone already: nothing to keep
                if dep.name not in used.setdefault(name, []):
                    used[name].append(dep.name)
    for name, groups in latents_in_use(run_dir, cache_roots).items():
        if (checkpoints_dir(run_dir) / name).is_dir():
            used.setdefault(name, []).extend(g for g in groups if g not in used[name])
    return used


def latents_in_use(run_dir: Path, cache_roots: Sequence[str]) -> dict[str, list[str]]:
    """The step folders of the pack run ``run_dir`` that latents groups in the caches
    ``cache_roots`` were encoded with (`pack encode` records its run and step in the group's
    attributes, and in its id, the pack id), each with ``latents <entry>/<group id>``; finished
    or not (an unfinished one resumes with that checkpoint). A group names a step folder only
    when the weights sha256 its pack id ends with is the one that folder's ``state.json``
    records (:func:`_latents_step`, ``runs.pack_id_names_other_weights``): latents of an
    earlier run of the same name (removed and trained again) are not this run's. Attributes
    are read, no array; a cache or group that cannot be read names nothing."""
    from repackctl.cache.creation import child_groups
    from repackctl.train.checkpoint import step_dir_name

    used: dict[str, list[str]] = {}
    for root in dict.fromkeys(cache_roots):
        try:
            names = list_entries(root)
        except (RepackError, OSError, ValueError):
            continue
        for entry_name_ in names:
            try:
                group = DatasetEntry.open(root, entry_name_).group
                latents = group["latents"] if "latents" in group else None
                ids = child_groups(latents) if latents is not None else []
            except Exception:  # an entry that cannot be read names nothing (rotation goes on)
                continue
            for gid in ids:
                step = _latents_step(latents, gid, Path(run_dir))
                if step is not None:
                    used.setdefault(step_dir_name(step), []).append(f"latents {entry_name_}/{gid}")
    return used


def latents_encoded_with(run_dir: Path, stage: str, cache: str) -> tuple[list[str], list[str]]:
    """(``latents ENTRY/GROUP in ROOT (encoded with step-N)``: the cached latents groups that
    `pack encode` wrote with a checkpoint of the pack run ``run_dir`` that is still there (they
    decode only with it), in the cache root ``cache`` (the settings' one) and those its
    checkpoints were trained from; the roots that could not be read, with why: not silently
    taken for holding none), for `runs info` and `runs rm`. Runs of another ``stage`` (DiT,
    refiner, t2i) encode nothing: none."""
    from repackctl.paths import is_url
    from repackctl.runs import CKPT_DIR, recorded_cache_roots

    if stage in ("dit", "refine", "t2i"):
        return [], []
    folder = Path(run_dir)
    roots = [cache, *recorded_cache_roots(folder)]
    found: list[str] = []
    unread: list[str] = []
    for root in dict.fromkeys(
        r if is_url(r) else str(Path(r).expanduser().resolve()) for r in roots
    ):
        try:
            used = latents_in_use(folder, [root])
        except Exception as e:  # e.g. an s3:// root without s3fs: named, not a traceback
            unread.append(f"cache {root} could not be read ({type(e).__name__}: {e})")
            continue
        for step, groups in sorted(used.items()):
            if (folder / CKPT_DIR / step).is_dir():  # a step gone: they decode with nothing now
                found += [f"{g} in {root} (encoded with {step})" for g in groups]
    return found, unread


def _latents_step(latents: Any, gid: str, run_dir: Path) -> int | None:
    """The step of the pack run ``run_dir`` that the latents group ``gid`` was encoded with (its
    ``pack`` attributes, else its id), or None (another run's, one of an earlier run of the same
    name, or unreadable). The run is matched by name and step, and the weights by the sha256
    the pack id ends with against the one the step folder's ``state.json`` records for them:
    a run removed and trained again under its name wrote other weights (the rule of the runs
    that depend on it too: ``runs.pack_id_names_other_weights``). Where either is not there to
    compare (a step folder gone or damaged), name and step decide, as before."""
    from repackctl.run_files import pack_id_run_step
    from repackctl.runs import pack_id_names_other_weights

    try:
        pack = latents[gid].attrs.get("pack")
    except Exception:  # unreadable metadata (as repackctl.cache.creation reads it): its id names it
        pack = None
    pack = pack if isinstance(pack, dict) else {}
    run = run_dir.name
    if isinstance(pack.get("step"), int):
        step = pack["step"] if pack.get("run") == run else None
    else:
        name, step = pack_id_run_step(gid)
        step = step if name == run else None
    if step is None:
        return None
    pack_id = pack.get("pack_id") if isinstance(pack.get("pack_id"), str) else gid
    which = pack.get("which") if isinstance(pack.get("which"), str) else "ema"
    if pack_id_names_other_weights(pack_id, run_dir, step, which):
        return None  # encoded with other weights of this step: an earlier run of this name
    return step


def _term_files(value: str | None, several: bool) -> list[str]:
    """The files a file setting names (LPIPS: ``several``, comma-separated)."""
    if value is None:
        return []
    return [p.strip() for p in value.split(",")] if several else [value]


def _check_term_files(cfg: PackSettings, sources: dict[str, str]) -> None:
    """Refuse ``pack.lpips_weights`` / ``pack.watson_weights`` naming what is no file while
    their term is on, before the features are opened (or loaded into memory) and anything is
    written: a missing file was found only once the data was open, with a message that named
    no source, and ``--lpips-weights ,`` (no file at all) ended in a traceback."""
    watson = cfg.watson_weight
    watson = PRESETS.get(cfg.preset, {}).get("watson_weight", 0.0) if watson is None else watson
    terms = (
        ("lpips_weights", cfg.perceptual_weight, "perceptual", "perceptual_weight", True),
        ("watson_weights", watson, "Watson-DFT", "watson_weight", False),
    )
    for name, weight, term, weight_name, several in terms:
        value = getattr(cfg, name)
        files = _term_files(value, several)
        bad = [p for p in files if not p or not Path(p).expanduser().is_file()]
        if value is None or not weight or not bad:
            continue
        raise ConfigError(
            f"pack.{name} names {bad[0] or repr(value)} (from "
            f"{sources.get(f'pack.{name}', 'default')}), which is no file: the {term} term "
            f"(pack.{weight_name} {weight:g}) reads its weights from it",
            f"pass --{name.replace('_', '-')} with an existing file, or leave it out to train "
            f"without the term (a run that recorded it: --{weight_name.replace('_', '-')} 0 "
            f"--allow-change {weight_name})",
        )


def _unplaced_attention(decoder: DecoderConfig) -> list[int]:
    """The values of ``attn_resolutions`` that are the side of no decoder level."""
    return [r for r in decoder.attn_resolutions if r not in decoder.sides]


def _check_new_run(plan: PackPlan, sources: dict[str, str] | None = None) -> None:
    """A new run trains at least one step and places every attention block it asks for (an
    unknown side used to be accepted and silently built no attention at all). ``sources``:
    where each setting came from (``ResolvedSettings.to_dict()["sources"]``), for the message."""
    if plan.steps < 1:
        raise ConfigError(
            f"pack.steps is {plan.steps}: run {plan.run_name} has no checkpoint yet, so it would "
            "train nothing and write no checkpoint",
            f"pass --steps N with N >= 1 (or leave it unset: the {plan.preset} preset trains "
            f"{_preset_length(plan.preset)}); --steps 0 only shows a run that has a checkpoint",
        )
    decoder = plan.autoencoder.decoder
    unplaced = _unplaced_attention(decoder)
    if unplaced:
        sides = ", ".join(str(s) for s in decoder.sides)
        origin = (sources or {}).get("pack.attn_resolutions")
        raise ConfigError(
            f"pack.attn_resolutions {list(decoder.attn_resolutions)}"
            + (f" (from {origin})" if origin else "")
            + ": no decoder level has "
            f"feature side {', '.join(str(r) for r in unplaced)} (a {decoder.latent_size}×"
            f"{decoder.latent_size} latent grid decoded to {decoder.resolution} px"
            + (
                f"; with pixel_shuffle {decoder.pixel_shuffle} the conv levels end at side "
                f"{decoder.sides[-1]}"
                if decoder.pixel_shuffle > 1
                else ""
            )
            + "), so that attention would go nowhere",
            f"valid sides: {sides}; pass --attn-resolutions once per side that gets attention "
            f"(e.g. --attn-resolutions {decoder.latent_size}, the latent grid)",
        )


def _check_batch(plan: PackPlan, ref: FeatureRef, sources: dict[str, str]) -> None:
    """A new run's global batch fits the entry's usable training images: a larger one was
    accepted and every batch repeated images (``settings.training.check_batch_fits``)."""
    from repackctl.pack.data import valid_indices

    rows = plan.images if plan.images is not None else len(valid_indices(ref.entry, ref.feats))
    check_batch_fits("pack", plan.batch_size, rows, f"usable images of {ref.entry.name}", sources)


def _grid_notes(
    cfg: PackSettings, rows: int, entry: str, sources: dict[str, str], new: bool
) -> list[str]:
    """The recon grid holds at most the entry's ``rows`` usable images: a ``grid_images`` the
    user gave above that is refused for a ``new`` run (it was accepted and recorded while the
    grid held fewer); a default or preset value above it (8 on a 4-image entry) is not the
    user's request, and a resumed run keeps what it started with, so the grid holds them all
    and a log line says so. Nothing when no grid is drawn."""
    if cfg.image_every == 0 or cfg.grid_images <= rows:
        return []
    source = sources.get("pack.grid_images", "default")
    if new and user_given(source):
        raise ConfigError(
            f"pack.grid_images = {cfg.grid_images} (from {source}) is more than the {rows} "
            f"usable images of {entry}: the grid can hold at most those",
            f"pass --grid-images {rows} or less",
        )
    return [
        f"recon grid: {rows} images, all that {entry} holds (pack.grid_images "
        f"{cfg.grid_images}, from {source})"
    ]


def _preset_length(preset: str) -> str:
    """The training length a preset gives (``600 steps``, ``99 epochs``)."""
    values = PRESETS[preset]
    if values.get("epochs") is not None:
        return f"{values['epochs']} epochs"
    return f"{values.get('steps')} steps"


def _ema_notes(plan: PackPlan, sources: dict[str, str]) -> list[str]:
    """The ``Warning:`` of a given ``--ema-decay`` that the pack's EMA warm-up (always on) does
    not reach within the run (``settings.checks.unreached_ema_decay``)."""
    from types import SimpleNamespace

    from repackctl.settings.checks import unreached_ema_decay

    values = SimpleNamespace(ema_decay=plan.ema_decay)
    line = unreached_ema_decay(values, "pack", sources, plan.steps, warmup=True)
    return [line] if line else []


def _resume_notes(plan: PackPlan, latest: Path | None) -> list[str]:
    """Log lines of a resumed run: attention its model never placed (it was started before
    that was refused; its model cannot change now), and a run with nothing left to train."""
    from repackctl.train.checkpoint import read_state

    if latest is None:
        return []
    notes = []
    decoder = plan.autoencoder.decoder
    unplaced = _unplaced_attention(decoder)
    if unplaced:
        notes.append(
            f"Warning: this run's attn_resolutions {list(decoder.attn_resolutions)} name no "
            f"decoder level (sides {', '.join(str(s) for s in decoder.sides)}): its decoder has "
            "no attention there"
        )
    done = int(read_state(latest).get("step", 0))
    if plan.steps <= done:
        notes.append(
            f"run {plan.run_name} is at step {done}, --steps is {plan.steps}: nothing to train "
            f"(pass --steps N with N > {done} to train on)"
        )
    return notes


def _nothing_to_train(
    steps: int, latest: Path | None, log: list[str], progress: ProgressFactory
) -> bool:
    """Whether the run's checkpoint is at or past ``steps``: then ``log`` is shown (not written
    to log.txt) and nothing is trained or written, as ``dit train`` does (but a missing or stale
    ``curves.png``)."""
    from repackctl.runtime import is_main_process
    from repackctl.train.checkpoint import read_state
    from repackctl.train.logging import redraw_stale_curves

    if latest is None or steps > int(read_state(latest).get("step", 0)):
        return False
    if is_main_process():  # a kill after the last checkpoint left the figure missing or stale
        redraw_stale_curves(latest.parent.parent)
    with progress("pack train", total=None) as bar:
        for line in log:
            bar.log(line)
    return True


def _gan_notes(plan: PackPlan) -> list[str]:
    """A warning when the GAN term is on but starts at or after the run's last step (the small
    preset's gan_start is 400: `--gan-weight 0.5 --steps 300` trained no GAN, silently). Not an
    error: a run may be continued with more steps."""
    loss = plan.loss
    if plan.discriminator is None or loss.gan <= 0 or loss.gan_start < plan.steps:
        return []
    return [
        f"Warning: the GAN term (gan_weight {loss.gan:g}) starts at step {loss.gan_start} "
        f"(gan_start), at or after this run's last step ({plan.steps}): it does not train in "
        f"this run (pass --gan-start below {plan.steps}, or --steps above {loss.gan_start})"
    ]


def _pca_fit(
    plan: PackPlan,
    data: PackData,
    max_samples: int | None,
    latest: Path | None,
    run_dir: Path,
    log: list[str],
) -> PCAResult | None:
    """The PCA method's fit: from the checkpoint on a resume (never refitted), else fitted now
    (its explained variance to ``pca.json`` and ``log``)."""
    from repackctl.runtime import is_main_process
    from repackctl.train.checkpoint import load_weights

    if plan.method != "pca":
        return None
    if latest is not None:  # the fit is part of the checkpoint: reuse it, do not refit
        sd = load_weights(latest, "model")
        return PCAResult(
            mean=sd["projection.mean"].double(),
            components=sd["projection.components"].double(),
            explained_variance=torch.zeros(plan.autoencoder.projection.latent_channels),
            explained_variance_ratio=sd["projection.explained_variance_ratio"].double(),
            count=0,
        )
    pca = fit_token_pca(data, plan.autoencoder.projection.latent_channels, max_samples)
    log.append(
        f"PCA to {len(pca.explained_variance)} dims explains "
        f"{100 * pca.cumulative_ratio:.1f}% of the token variance ({pca.count} tokens)"
    )
    if not is_main_process():  # every process fits the same numbers; the main one writes
        return pca
    # a new run's folder is made here, before the engine's: hold its lock first, so that a
    # second start of the same new run (refused by the engine) does not overwrite this file
    lock_run(run_dir, create=True)
    write_json_atomic(
        run_dir / "pca.json",
        {
            "count": pca.count,
            "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
            "cumulative": pca.cumulative_ratio,
        },
    )
    return pca


def _whitening_fit(
    plan: PackPlan, data: PackData, max_samples: int | None, latest: Path | None, log: list[str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The whitened projection's ``(mean, matrix)``: from the checkpoint on a resume (never
    refitted), else fitted now."""
    from repackctl.train.checkpoint import load_weights

    projection = plan.autoencoder.projection
    if not projection.whiten:
        return None
    if latest is not None:
        sd = load_weights(latest, "model")
        return sd["projection.token_mean"], sd["projection.token_whitening"]
    log.append(f"whitening fitted on the tokens of up to {max_samples} samples (ZCA)")
    return fit_whitening(data, projection.in_channels, max_samples)
