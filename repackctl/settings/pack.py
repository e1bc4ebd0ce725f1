"""Settings of `repackctl pack` (nested as `[pack]` / `REPACKCTL_PACK__*`).

One section serves ``pack train``, ``pack encode`` and the pack evaluations (``evaluate recon``,
``evaluate probe``): they all name the same run and the same cache entry.

Sizes left at ``None`` follow a *preset*, applied by the settings layer (so a flag, a TOML file, an
environment variable and a Python caller get the same values). ``auto`` picks ``small`` on a CPU
or with the built-in encoder, ``paper`` otherwise:

* ``paper``: the official RePack stage 1 — d = 32, the official projection form (two stacked 1×1
  maps C → 2d without bias, 2d → 2d with bias, and the decoder's ``post_quant_conv``;
  ``projection_form``, see ``repackctl.pack.projection``), decoder ch 128 with the official
  multipliers, 2 ResBlocks per level, attention at 16², PatchGAN with 64 base channels and
  BatchNorm, Adam 1e-5 betas (0.5, 0.9), batch 32 (8 × 4 GPUs), no EMA (decay 0: the EMA copy is the
  weights), GAN off for the first update only (``gan_start`` 1 = the official ``disc_start`` 1)
  with the discriminator trained from the first update on (``disc_lead`` 1: the official
  discriminator's step of the first batch is Lightning's global step 1), 99 epochs (the
  official ``max_epochs``; ``epochs``), fp32 without TF32 (as the official script ran),
  the Watson-DFT distance at the official 0.005 (``watson_weight``; on only with its parameters
  file, ``watson_weights``, like LPIPS with ``lpips_weights``), the focal-frequency loss at the
  official 0.05 (``ffl_weight``) and the official adaptive GAN weight (``adaptive_gan``).
* ``small`` (narrower tokens: the built-in encoder, ``patchpix``): d = 8, the folded projection
  (one affine map C → 2d, no ``post_quant_conv``; as every run before the setting), whitened tokens
  (``whiten``, see ``repackctl.pack.projection``), ch 16, one ResBlock per level, no attention,
  GroupNorm with 4 groups (``norm_groups``), the built-in encoder's feature distance as the
  perceptual term (``feature_weight`` 1; the official LPIPS-VGG needs a download), a 16-channel
  discriminator, batch 16, lr 2e-3 (1e-5 does not get anywhere in the ~1000 CPU steps this
  preset is for), EMA 0.99, GAN from step 400.
  Whitening and 4 groups took the demo's held-out recon from 15.1 dB (grey images) to 19 dB at
  600 steps: 32 groups of a 16-channel level are a per-channel (instance) norm, which removes
  each image's mean colour, and the built-in encoder keeps chroma in low-variance token
  directions that an unwhitened projection learns slowly. The feature distance took the class
  accuracy of the demo's decoded val images from 67 % to 92 % (an independent CNN judge: 88 % →
  99 %): with L1 alone the decoder draws blurred shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from repackctl.settings.checks import (
    check_file_term,
    check_gan_options,
    check_output_options,
    check_term_options,
    ema_decay_below_one,
)
from repackctl.settings.training import check_some_term_on


class PackSettings(BaseModel):
    """`repackctl pack` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    SHORT: ClassVar[dict[str, str]] = {
        "encoder": "-e",
        "data": "-d",
        "num": "-n",
        "eval_num": "-n",
        "latent_channels": "-c",
        "run": "-r",
    }
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Features": ("encoder", "weights", "layer", "data", "split", "resolution", "num", "entry", "features"),
        "Run": ("allow_change", "run", "method", "preset"),
        "Model": ("latent_channels", "projection_form", "whiten", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "pixel_shuffle", "norm_groups", "disc_channels", "disc_layers", "disc_norm"),
        "Optimisation": ("steps", "epochs", "batch_size", "lr", "disc_lr", "betas", "ema_decay", "clip_grad"),
        "Losses": ("l1_weight", "perceptual_weight", "lpips_weights", "ffl_weight", "watson_weight", "watson_weights", "feature_weight", "scale_equivariance_weight", "kl_weight", "gan_weight", "gan_start", "disc_lead", "adaptive_gan"),
        "Output": ("ckpt_every", "keep_last", "log_every", "image_every", "grid_images"),
        "Data loading": ("in_memory", "buffer_blocks", "pca_samples", "encode_batch_size"),
        "Evaluation": ("eval_split", "eval_entry", "eval_num", "inception_weights"),
    }  # fmt: skip
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below the class

    # ---- which features (same meaning as in `repackctl extract`) ------------------------------
    encoder: str = Field("builtin", description="encoder id whose cached tokens are packed")
    weights: str | None = Field(
        None, min_length=1, description="encoder weights, as given to extract"
    )
    layer: int | None = Field(None, description="encoder block, as given to extract")
    data: str = Field("builtin", description="data source, as given to extract")
    split: str = Field("train", description="split the packing autoencoder trains on")
    resolution: int | None = Field(
        None,
        ge=1,
        description="image size of the cache entry; none = 64 for builtin, 256 otherwise",
    )
    num: int | None = Field(None, ge=1, description="number of images, as given to extract")
    entry: str | None = Field(
        None, min_length=1, description="cache entry name (overrides data/split/resolution/num)"
    )
    features: str | None = Field(
        None,
        min_length=1,
        description="features id inside the entry (overrides encoder/weights/layer)",
    )

    # ---- the run -------------------------------------------------------------------------------
    run: str | None = Field(
        None,
        min_length=1,
        description="run name under `runs` (train writes it; encode/evaluate read it, or a "
        "checkpoint folder path); none = pack-<encoder>-<method>",
    )
    method: Literal["repack", "pca"] = Field(
        "repack", description="repack: learned KL projection; pca: frozen PCA (the baseline)"
    )
    allow_change: list[str] = Field(
        default_factory=list,
        description="on resume, settings allowed to change although that breaks exact "
        "continuation (setting names, or all); every allowed change goes to config_history.jsonl",
    )
    preset: Literal["auto", "paper", "small"] = Field(
        "auto",
        description="defaults for unset sizes: auto picks small on a CPU and for the built-in "
        "encoder, paper on a GPU",
    )

    # ---- model sizes (none = from the preset) -------------------------------------------------
    latent_channels: int | None = Field(None, ge=1, description="packed channels d")
    projection_form: Literal["official", "folded"] | None = Field(
        None,
        description="parameterisation of the repack projection: official = the official two "
        "stacked 1×1 maps (C → 2d without bias, then 2d → 2d with bias, PyTorch's default init) "
        "plus the decoder's post_quant_conv (d → d with bias); folded = their composition as one "
        "affine map C → 2d and no post_quant_conv (the same function class, another init and "
        "Adam dynamics); runs that recorded none are folded and resume so; ignored by the pca "
        "method; none = preset (paper official, small folded)",
    )
    whiten: bool | None = Field(
        None,
        description="ZCA-whiten the tokens (fitted on the training tokens) before the projection "
        "(repack method only): still one affine map, better conditioned; none = preset (paper "
        "off, small on)",
    )
    ch: int | None = Field(None, ge=1, description="decoder base width")
    ch_mult: list[int] | None = Field(None, description="decoder width multipliers per level")
    num_res_blocks: int | None = Field(None, ge=1, description="ResBlocks per decoder level")
    attn_resolutions: list[int] | None = Field(None, description="feature sides with attention")
    pixel_shuffle: int | None = Field(
        None,
        ge=1,
        description="end the decoder's conv levels at 1/s of the image side and lay out its "
        "last conv's 3·s² values per position as s×s pixels (a power of two; 1 = off, the "
        "official decoder); none = preset (paper 1, small 4)",
    )
    norm_groups: int | None = Field(
        None,
        ge=1,
        description="decoder GroupNorm groups (at most; fewer where a width needs it); none = "
        "preset (paper 32, small 4: 16 groups of a 16-wide level normalise each channel on its "
        "own, which strips every image's mean colour)",
    )
    disc_channels: int | None = Field(None, ge=1, description="PatchGAN base channels")
    disc_layers: int = Field(3, ge=1, description="PatchGAN stride-2 layers")
    disc_norm: Literal["group", "batch"] | None = Field(
        None,
        description="discriminator norm: group (per sample: the same for any batch split) or "
        "batch (the official NLayerDiscriminator); none = preset (paper batch, small group)",
    )

    # ---- optimisation --------------------------------------------------------------------------
    steps: int | None = Field(
        None,
        ge=0,
        description="training steps; none = from epochs, else the preset (small 600); of steps "
        "and epochs, the one from the higher layer wins (both in one layer: refused)",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="training length in passes over the training images, used when steps is "
        "not given: steps = ceil(epochs × images / batch_size); none = preset (paper 99, the "
        "official max_epochs; small none)",
    )
    batch_size: int | None = Field(
        None, ge=1, description="global batch (all processes); none = preset (paper 32, small 16)"
    )
    lr: float | None = Field(None, gt=0, description="Adam lr; none = preset (paper 1e-5)")
    disc_lr: float | None = Field(None, gt=0, description="discriminator lr; none = lr")
    betas: tuple[float, float] = Field((0.5, 0.9), description="Adam betas (official)")
    ema_decay: float | None = Field(
        None, ge=0, description="EMA decay, below 1; 0 = no EMA; none = preset"
    )
    clip_grad: float | None = Field(None, gt=0, description="max grad norm; none = no clipping")

    # ---- losses (pack.losses: every term a per-sample mean, averaged over the batch) ------------
    l1_weight: float = Field(1.0, ge=0, description="L1 pixel loss weight")
    perceptual_weight: float = Field(
        1.0, ge=0, description="LPIPS weight (used only when lpips_weights is set)"
    )
    lpips_weights: str | None = Field(
        None,
        min_length=1,
        description="local LPIPS-VGG weights (.safetensors/.pth; two files comma-separated); "
        "none = perceptual loss off, with a warning",
    )
    ffl_weight: float = Field(
        1.0,
        ge=0,
        description="focal-frequency loss weight (a mean over patches, channels and frequencies, "
        "as the official); preset paper 0.05 (the official loss_weight), otherwise 1",
    )
    watson_weight: float | None = Field(
        None,
        ge=0,
        description="Watson-DFT perceptual distance weight (Czolbe et al. 2020; per image "
        "element, as the official / numel), used only when watson_weights is set; none = preset "
        "(paper 0.005, the official; small 0)",
    )
    watson_weights: str | None = Field(
        None,
        min_length=1,
        description="local Watson-DFT parameters (the official rgb_watson_fft_trial0.pth, or its "
        "tensors as .safetensors); none = Watson-DFT term off, with a warning when its weight "
        "is > 0",
    )
    feature_weight: float | None = Field(
        None,
        ge=0,
        description="weights-free perceptual term: multi-layer feature distance in the built-in "
        "encoder (pack.features; our stand-in for LPIPS, which needs a download); none = preset "
        "(paper 0, small 1)",
    )
    scale_equivariance_weight: float | None = Field(
        None,
        ge=0,
        description="L1 of the decoder's image of the x2-pooled latent against the x2-pooled "
        "image (Skorokhodov et al. 2025, 'Improving the Diffusability of Autoencoders'): a "
        "latent with less high-frequency content, easier for the DiT; none = preset (paper 0, "
        "small 1)",
    )
    kl_weight: float = Field(
        1e-6,
        ge=0,
        description="KL weight in the paper's convention (per-sample sums); converted to the "
        "per-element reduction",
    )
    gan_weight: float = Field(0.5, ge=0, description="hinge GAN weight (times the adaptive one)")
    gan_start: int | None = Field(
        None,
        ge=0,
        description="first update (0-based) with the GAN terms: 1 = off for the first update "
        "only (the official disc_start 1); none = preset (paper 1, small 400)",
    )
    disc_lead: int | None = Field(
        None,
        ge=0,
        description="updates the discriminator trains before the generator's GAN term: it "
        "first trains at update gan_start - disc_lead (at least 0); none = preset (paper 1: "
        "the official stage 1 steps it on the first batch, whose GAN term is off; small 0)",
    )

    adaptive_gan: Literal["official", "all_terms"] | None = Field(
        None,
        description="adaptive GAN weight (VQGAN eq. 7): official = gradient of L1 + perceptual, "
        "capped at 1e4/(3*H*W) (the official 1e4 on a per-image sum); all_terms = of every "
        "weighted reconstruction term, capped at 1e4; none = preset (paper official, small "
        "all_terms)",
    )

    # ---- loop ----------------------------------------------------------------------------------
    ckpt_every: int = Field(500, ge=1, description="steps between checkpoints")
    keep_last: int = Field(3, ge=0, description="checkpoints kept (0 = all)")
    log_every: int = Field(50, ge=1, description="steps between metric lines")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="stop with an error after this many non-finite steps in a row"
    )
    image_every: int = Field(500, ge=0, description="steps between recon grids (0 = never)")
    in_memory: bool | None = Field(
        None, description="load tokens + images into memory; none = when under memory_gb"
    )
    buffer_blocks: int | None = Field(
        None,
        ge=1,
        description="shuffle samples within this many chunks; none = as many as memory_gb holds "
        "(at least 16; 16 when in memory; a resumed run keeps its recorded value)",
    )
    pca_samples: int = Field(
        20000, ge=1, description="samples (both flips) the PCA is fitted on, evenly spread"
    )

    # ---- encode --------------------------------------------------------------------------------
    encode_batch_size: int = Field(64, ge=1, description="samples per projection forward")

    # ---- evaluate recon / probe ----------------------------------------------------------------
    eval_split: str = Field("val", description="held-out split for recon and probe scores")
    eval_entry: str | None = Field(
        None, min_length=1, description="held-out cache entry name (overrides)"
    )
    eval_num: int | None = Field(None, ge=1, description="score at most this many samples")
    grid_images: int = Field(
        8,
        ge=1,
        description="images in the grid of originals over reconstructions (pack train, "
        "evaluate recon)",
    )
    inception_weights: str | None = Field(
        None, min_length=1, description="Inception weights file for rFID; none = rFID skipped"
    )
    probe_epochs: int = Field(100, ge=1, description="epochs of each linear probe")

    @field_validator("ema_decay")
    @classmethod
    def _ema_moves(cls, value: float | None) -> float | None:
        return ema_decay_below_one(value)

    @field_validator("weights")
    @classmethod
    def _absolute_weights(cls, value: str | None) -> str | None:
        """A weights file that exists is recorded by its absolute path, as ``extract`` records it
        (``repackctl.settings.extract``): the run's config and checkpoints record these settings,
        and a resume or ``pack encode`` reads them from any folder (a relative path only from
        the one it was given in). Runs recorded before keep it relative: ``repackctl.pack.data
        .recorded_weights`` reads it only where it names the recorded file."""
        if value is None or value in ("random", "builtin"):
            return value
        path = Path(value).expanduser()
        return os.path.abspath(path) if path.is_file() else value  # a link stays named so

    def check_terms(self, section: str, sources: dict[str, str]) -> None:
        """Refuse a ``kl_weight`` the user gave with ``method pca``: the PCA baseline is a fixed
        map without a posterior, so it trains no KL term (``repackctl.settings.checks``); and
        the discriminator's options given with ``gan_weight`` 0, which builds no discriminator
        (they were accepted, recorded in the plan and ignored); and ``pca_samples`` given with
        the repack method without whitening, which fits nothing on the tokens; and those of the
        file terms and the recon grids (:meth:`_check_files_and_grids`); and settings under
        which no loss term is on (the run died in its first backward pass)."""
        check_gan_options(self, section, sources, GAN_OPTIONS)
        self._check_files_and_grids(section, sources)
        if self.method == "repack" and self.whiten is False:
            # pca_samples sizes the fit of the PCA or of the repack whitening: without either
            # it was accepted and ignored
            check_term_options(
                self,
                section,
                sources,
                ("pca_samples",),
                "whiten",
                "the token whitening fit (the repack method fits nothing else)",
                "pass --whiten, or --method pca",
            )
        if self.method == "pca":
            check_term_options(
                self,
                section,
                sources,
                ("kl_weight",),
                "method",
                "the KL term of the repack posterior",
                "pass --method repack",
            )
        # the PCA map has no posterior: its KL weight trains nothing
        weights = LOSS_WEIGHTS if self.method == "repack" else LOSS_WEIGHTS[:-1]
        check_some_term_on(self, section, sources, weights, FILE_TERMS, self._adaptive_gan())

    def _adaptive_gan(self) -> tuple[str, tuple[str, ...], str]:
        """The GAN weight and the reconstruction terms its adaptive weight is scaled by
        (``pack.losses``: official = L1 + LPIPS, all_terms = every one but the KL)."""
        official = self.adaptive_gan == "official"
        terms = ("l1_weight", "perceptual_weight") if official else RECON_WEIGHTS
        why = (
            f"scaled by the adaptive GAN weight (pack.adaptive_gan = {self.adaptive_gan!r}) of "
            f"{' + '.join(t.removesuffix('_weight') for t in terms)}, all off: it trains only "
            "the discriminator"
        )
        return "gan_weight", terms, why

    def _check_files_and_grids(self, section: str, sources: dict[str, str]) -> None:
        """Refuse a ``perceptual_weight`` / ``watson_weight`` above 0 given without its local
        file (the term was off, with a warning; a preset's weight without the file stays that
        warning), the file given with the weight 0 (loaded by nothing), and ``grid_images``
        given with ``image_every`` 0 (no recon grid is made)."""
        lpips = ("perceptual_weight", "lpips_weights")
        check_file_term(self, section, sources, lpips, "the LPIPS perceptual term", LPIPS_FILE)
        watson = ("watson_weight", "watson_weights")
        check_file_term(self, section, sources, watson, "the Watson-DFT term", WATSON_FILE)
        check_output_options(self, section, sources)


#: the files of the LPIPS and Watson-DFT terms, as a hint names them
LPIPS_FILE = "a local LPIPS-VGG .safetensors/.pth file (two files comma-separated)"
WATSON_FILE = "the official rgb_watson_fft_trial0.pth (or its tensors as .safetensors)"
#: the weights of the pack loss terms (at least one must be on; the KL last: repack only), and
#: the local file each file-backed term needs
RECON_WEIGHTS = (
    *("l1_weight", "perceptual_weight", "ffl_weight", "watson_weight", "feature_weight"),
    "scale_equivariance_weight",
)
LOSS_WEIGHTS = (*RECON_WEIGHTS, "gan_weight", "kl_weight")
FILE_TERMS = {"perceptual_weight": "lpips_weights", "watson_weight": "watson_weights"}

#: the options that only tune the GAN term (off when ``gan_weight`` is 0: no discriminator)
GAN_OPTIONS = (
    *("gan_start", "disc_lead", "adaptive_gan", "disc_lr"),
    *("disc_channels", "disc_layers", "disc_norm"),
)

PRESETS: dict[str, dict[str, Any]] = {
    # official RePack stage 1 (reference/methods.md; stage1/configs/
    # stage1_repack_dinov3b_f16d32_ffl_watson.yaml, stage1/repack/losses/perceptual.py)
    "paper": {
        "latent_channels": 32,
        # the official conv_out (no bias) + quant_conv (bias) and the decoder's post_quant_conv
        "projection_form": "official",
        "whiten": False,
        "ch": 128,
        "ch_mult": None,  # derived: the official (1, 1, 2, 2, 4) for a ×16 decoder
        "num_res_blocks": 2,
        "attn_resolutions": [16],
        "pixel_shuffle": 1,  # the official decoder upsamples by convs to the full resolution
        "norm_groups": 32,
        "disc_channels": 64,
        "disc_norm": "batch",  # the official NLayerDiscriminator (use_actnorm=False)
        "epochs": 99,  # official max_epochs 99: steps = ceil(99 × images / 32)
        "batch_size": 32,
        "lr": 1e-5,
        "ema_decay": 0.0,  # the official stage 1 keeps no EMA: the EMA copy equals the weights
        # official disc_start 1 with adopt_weight(global_step >= 1): off for the first update
        # only (our step counter is 0-based too: pack.losses.gan_factor is step >= gan_start)
        "gan_start": 1,
        # official disc_start 1 on Lightning's global_step, which counts optimizer steps (two a
        # batch): the discriminator's step of the first batch is global_step 1, so it trains
        # from update 0, one before the generator's GAN term (pack.losses.LossConfig.disc_lead)
        "disc_lead": 1,
        "feature_weight": 0.0,  # the official recipe has LPIPS-VGG (pack.lpips_weights) instead
        "scale_equivariance_weight": 0.0,  # not in the official recipe
        # official WatsonLoss loss_weight 0.005 on Σ D / numel: the same value in our reduction
        # (pack.losses); on only with the parameters file (pack.watson_weights)
        "watson_weight": 0.005,
        # official FocalFrequencyLoss loss_weight 0.05 on a mean over (B, patches, C, h, w): the
        # same reduction as ours (pack.losses), so the same value
        "ffl_weight": 0.05,
        # official calculate_adaptive_weight: ∇ of nll_loss = L1 + LPIPS only, cap 1e4 on a
        # per-image sum = 1e4 / (3·H·W) in our per-element reduction (pack.discriminator)
        "adaptive_gan": "official",
        # the official callbacks (train_stage1.py) count Lightning's global_step, which advances
        # once per optimizer step, so twice per batch here (the autoencoder's and the
        # discriminator's; Lightning issue 17958): save_every_n_steps 20000 = a checkpoint every
        # 10000 updates; the image log every 1000 = 500 updates (our default image_every), of
        # image_log_max_images 4 images
        "ckpt_every": 10_000,
        "grid_images": 4,
    },
    # built-in encoder / patchpix at 64 px: about a minute on 2 CPU cores
    "small": {
        "latent_channels": 8,
        "projection_form": "folded",  # one affine map, as the demo and its figures were made
        "whiten": True,
        "ch": 16,
        "ch_mult": None,  # derived: (1, 2, 2, 4) for a ×8 decoder
        "num_res_blocks": 1,
        "attn_resolutions": [],
        # the ×4 of the last two levels as one pixel shuffle: at the same steps 2.1 dB higher
        # held-out PSNR in half the time (repackctl.pack.decoder)
        "pixel_shuffle": 4,
        "norm_groups": 4,
        "disc_channels": 16,
        "disc_norm": "group",
        "steps": 600,
        "epochs": None,  # the step count above
        "batch_size": 16,
        "lr": 2e-3,
        "ema_decay": 0.99,
        "gan_start": 400,
        "disc_lead": 0,  # the discriminator starts with the GAN term, as it was tuned
        "feature_weight": 1.0,
        "scale_equivariance_weight": 1.0,
        "watson_weight": 0.0,
        # the GAN weighed against every term the small decoder trains with (incl. the feature
        # distance, FFL and scale equivariance), as it was tuned
        "adaptive_gan": "all_terms",
    },
}

PackSettings.PRESETS.update(PRESETS)
