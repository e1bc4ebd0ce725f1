"""Stage-1 (and refiner) losses: L1, LPIPS-VGG, focal-frequency, Watson-DFT, KL and PatchGAN,
one reduction.

Reduction — the one rule for every term: each term is a **per-sample mean** (over pixels ×
channels, over frequencies, over LPIPS positions, over latent elements, over patch logits), then
**averaged over the batch**. With that, a weight of 1 on any term means the same thing, and the
default weights give each term a real share of the gradient.

Why: the official RePack stage 1 (guanfangdong/RePack-then-Refine, ``stage1/repack/losses/
perceptual.py``, ``weighted.py``) *sums* L1 + LPIPS over the ~196k pixel values of a 256² image
and divides by B, but *means* the focal-frequency loss (weight 0.05) and the Watson-DFT distance
(weight 0.005 / numel), so those two terms are about 2·10⁵ times weaker than their weights say,
i.e. effectively off. L1 and LPIPS were reduced alike (LPIPS, one value per sample, was broadcast
over the pixels before the sum), so dividing both by the pixel count keeps their balance. Their
KL weight 1e-6 on a per-sample *sum* over 16·16·32 latent elements is, in our reduction,
1e-6 · 8192 / 196608 ≈ 4·10⁻⁸ (``OFFICIAL_KL_WEIGHT``).

The focal-frequency term: the official (``frequency.py``) is ``loss_weight`` × the mean over
(B, patches, C, h, w) of the detached, per-(sample, patch, channel)-max-normalised |ΔF|^α times
|ΔF|², orthonormal FFT: the same value as ``focal_frequency_loss`` here (equal-size samples, so
the per-sample mean averaged over the batch is the global mean). So, as for Watson below, the
official weight keeps its value: the paper preset sets ``ffl = 0.05``. Next to the official
summed L1 that 0.05 weighed 0.05 / (3·H·W) ≈ 2.5·10⁻⁷; pass that to reproduce the balance.

The Watson-DFT term: the official (``watson_loss.py``) computes 0.005 · Σ_b D_b / numel, with
D_b the Watson distance of sample b (one value per image) and numel = B · 3 · H · W, i.e. the
weight 0.005 on the per-sample D_b / (3·H·W), averaged over the batch. That is this module's
reduction already (D_b per image element, the way L1 is a mean over the image's elements), so
the official weight keeps its value: ``watson = 0.005`` means what the official wrote, relative
to a per-element L1. Like the FFL it was meant as a real term: next to the official per-sample
*summed* L1 the same 0.005 weighed 0.005 / (3·256²) ≈ 2.5·10⁻⁸ (effectively off, the pitfall of
``reference/methods.md``); pass ``watson = 0.005 / (3·H·W)`` to reproduce that balance. The
reference is the original image (the paper's definition; the official code swaps its inputs and
masks with the reconstruction; ``repackctl.pack.watson``).

Terms:
- L1 (pixel): mean |x − x̂|.
- LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
  Metric"), VGG16 variant: ImageNet-scaled input, torchvision VGG16 features at relu1_2, relu2_2,
  relu3_3, relu4_3, relu5_3, channel-unit-normalised, squared difference, learned non-negative
  1×1 "lin" heads, spatial mean, summed over the five layers. Weights come only from local files
  the caller names (no downloads); without them ``load_lpips`` raises ``PerceptualUnavailable``.
- Focal frequency loss (Jiang et al. 2021, "Focal Frequency Loss for Image Reconstruction and
  Synthesis"): orthonormal 2-D FFT of image patches, squared spectrum distance weighted by the
  detached, per-spectrum max-normalised |ΔF|^α.
- Feature distance (ours, ``feature``; off in the official recipe): the weights-free perceptual
  term of ``repackctl.pack.features``, a multi-layer distance in the frozen built-in encoder,
  one value per sample. It stands in for LPIPS where no LPIPS weights exist (offline, toy data).
- Scale equivariance (``scale_equivariance``; off in the official recipe): Skorokhodov et al.
  2025, "Improving the Diffusability of Autoencoders" (ICML; arXiv 2502.14831). The decoder must
  also map the latent, average-pooled ×2, to the image average-pooled ×2 (L1). A decoder that
  does so cannot rely on latent detail finer than the image's own, so the latent loses the
  high-frequency content that makes it hard to model by diffusion. The paper fine-tunes with a
  random ×2 or ×4 bilinear downsampling; here it is one ×2 box filter (``SE_FACTOR``), from
  step 0, which the small grids of the built-in encoder (8 × 8) can always take.
- Watson-DFT (Czolbe et al. 2020, "A Loss Function for Generative Neural Networks Based on
  Watson's Perceptual Model"): ``repackctl.pack.watson``, per sample, divided by 3·H·W (above).
  Its learned parameters come only from a local file (``pack.watson_weights``); without one the
  trainer switches the term off with a warning, as for LPIPS.
- KL of the posterior to N(0, I), per latent element.
- GAN (generator side): hinge −mean(D(x̂)), scaled by the adaptive weight and ``gan`` from
  ``gan_start`` on (the discriminator from ``gan_start − disc_lead``: ``LossConfig``). The
  adaptive weight (``adaptive_gan``): ``official`` compares the GAN
  gradient with that of the official ``nll_loss``, L1 + LPIPS only (``perceptual.py``), capped
  at 1e4 / (3·H·W), the official 1e4 on a per-sample sum in our reduction
  (``pack.discriminator.official_adaptive_max``): our weight is then the official one / (3·H·W),
  as every other term of ours is. ``all_terms`` (the library default, the small preset's)
  compares with every weighted reconstruction term (incl. FFL, feature, Watson, scale
  equivariance), capped at 1e4.

Legend: B batch, C channels, H×W image, P patches, h×w spectrum / feature map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repackctl.errors import ConfigError, WeightsError
from repackctl.pack.discriminator import (
    ADAPTIVE_WEIGHT_MAX,
    adaptive_gan_weight,
    gan_factor,
    hinge_d_loss,
    hinge_g_loss,
    official_adaptive_max,
)
from repackctl.pack.projection import DiagonalGaussian, known_config_keys

# The setting that names the LPIPS weights file(s); used in hints so users know what to set.
LPIPS_SETTING = "pack.lpips_weights"
LPIPS_ENV = "REPACKCTL_PACK__LPIPS_WEIGHTS"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Pixel and frequency terms


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample, averaged over the batch (= the global mean)."""
    return (x - y).abs().flatten(1).mean(1).mean()


#: The downsampling factor of the scale-equivariance term (latent and image alike).
SE_FACTOR = 2


def downscaled_pair(
    decode: Any, z: torch.Tensor, target: torch.Tensor, factor: int = SE_FACTOR
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale-equivariance pair: ``decode`` of the latent ``z`` (B, d, h, w) average-pooled
    ``factor``× and the image ``target`` (B, 3, H, W) pooled alike, both (B, 3, H/f, W/f)."""
    return decode(F.avg_pool2d(z, factor)), F.avg_pool2d(target, factor)


def _patch_spectrum(x: torch.Tensor, patch_factor: int) -> torch.Tensor:
    """(B, C, H, W) → orthonormal FFT of a patch_factor × patch_factor tiling: (B, P, C, h, w)."""
    b, c, hh, ww = x.shape
    if hh % patch_factor or ww % patch_factor:
        raise ConfigError(
            f"FFL patch_factor {patch_factor} does not divide the image size {hh}×{ww}",
            "set ffl_patch_factor to a divisor of the resolution (1 = whole image)",
        )
    ph, pw = hh // patch_factor, ww // patch_factor
    patches = x.reshape(b, c, patch_factor, ph, patch_factor, pw)  # (B, C, p, h, p, w)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c, ph, pw)  # (B, P, C, h, w)
    # FFT in float32 at least: half-precision FFTs only take power-of-two sizes and lose detail.
    return torch.fft.fft2(patches.float(), norm="ortho")  # (B, P, C, h, w) complex


def focal_frequency_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, patch_factor: int = 1
) -> torch.Tensor:
    """Focal frequency loss (Jiang et al. 2021), per-sample mean over patches, channels and
    frequencies, averaged over the batch.

    The spectrum weight |F(pred) − F(target)|^α is normalised by its maximum within each
    (sample, patch, channel) spectrum and detached, as in the paper's reference implementation.
    With the orthonormal FFT, α = 0 reduces to the mean squared error (Parseval).
    """
    diff = _patch_spectrum(pred, patch_factor) - _patch_spectrum(target, patch_factor)
    dist = diff.real.pow(2) + diff.imag.pow(2)  # (B, P, C, h, w)
    with torch.no_grad():
        weight = dist.sqrt().pow(alpha)  # (B, P, C, h, w)
        peak = weight.flatten(-2).amax(-1)[..., None, None].clamp_min(1e-8)  # (B, P, C, 1, 1)
        weight = torch.nan_to_num(weight / peak).clamp(0.0, 1.0)  # (B, P, C, h, w)
    return (weight * dist).flatten(1).mean(1).mean()


# --------------------------------------------------------------------------------------------
# LPIPS (VGG16)

# torchvision VGG16 ``features`` indices that end each LPIPS slice (after relu1_2 … relu5_3).
_VGG_SLICE_ENDS = (4, 9, 16, 23, 30)
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class PerceptualUnavailable(WeightsError):
    """No LPIPS weights were given; the trainer should warn and switch the term off."""


class LPIPS(nn.Module):
    """LPIPS-VGG distance between images in [−1, 1]: (B,) per-sample values (frozen)."""

    def __init__(self, init_weights: bool = True) -> None:
        super().__init__()
        # torchvision's VGG16 feature stack ("D" config) without the 100 M-parameter classifier;
        # heavy import kept local. ``init_weights=False`` builds the layers on the meta device
        # (no random init, which costs seconds on a CPU) for ``load_lpips`` to fill in.
        from torchvision.models.vgg import cfgs, make_layers

        with torch.device("cpu" if init_weights else "meta"):
            self.features = make_layers(cfgs["D"], batch_norm=False)[: _VGG_SLICE_ENDS[-1]]
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _VGG_CHANNELS)
        # LPIPS' ScalingLayer: maps [−1, 1] input to ImageNet-normalised input.
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # Always in eval mode (the lin heads' dropout is a training-time detail of LPIPS itself).
        return super().train(False)

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale  # (B, 3, H, W)
        outs, start = [], 0
        for end in _VGG_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)  # (B, C_k, H_k, W_k)
            start = end
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])  # (B,)
        both = self._layers(torch.cat([x, y], dim=0))
        for fx_fy, lin in zip(both, self.lins, strict=True):
            fx, fy = fx_fy.chunk(2, dim=0)  # (B, C_k, H_k, W_k) each
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit channel vectors
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy).pow(2)).mean(dim=(1, 2, 3))  # (B,)
        return total


def _normalise_lpips_key(key: str) -> str | None:
    """Map keys of the known layouts onto ours; ``None`` for keys to ignore.

    Accepted: our own (``features.N.*``, ``lins.K.weight``), torchvision VGG16 state dicts
    (``features.N.*``; the classifier is ignored), the ``lpips`` package / taming-transformers
    layout (``net.sliceS.N.*``, ``linK.model.1.weight``), and a ``perceptual_loss.``/``module.``
    prefix in front of any of these.
    """
    for prefix in ("perceptual_loss.", "module."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    parts = key.split(".")
    if parts[0] == "features":
        return key
    if parts[0] == "lins":
        return key
    if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
        return f"features.{parts[2]}.{parts[3]}"
    if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
        return f"lins.{parts[0][3:]}.weight"
    return None  # classifier.*, scaling_layer.*, anything else: not part of LPIPS-VGG


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PerceptualUnavailable(
            f"LPIPS weights file not found: {path}",
            f"set {LPIPS_SETTING} ({LPIPS_ENV}) to an existing .safetensors/.pth file",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or not a torch file
        raise WeightsError(
            f"cannot read LPIPS weights {path} safely: {exc}",
            "convert the file to .safetensors, or to a plain state dict of tensors",
        ) from exc
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightsError(f"{path} does not hold a state dict", "save a dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def perceptual_available(weights: PathLike | Sequence[PathLike] | None) -> bool:
    """True when LPIPS weight file(s) are named and exist (the trainer's cheap check)."""
    paths = _as_paths(weights)
    return bool(paths) and all(p.is_file() for p in paths)


def _as_paths(weights: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if weights is None or weights == "":
        return []
    if isinstance(weights, str | os.PathLike):
        return [Path(weights).expanduser()]
    return [Path(w).expanduser() for w in weights]


def load_lpips(weights: PathLike | Sequence[PathLike] | None) -> LPIPS:
    """Build LPIPS-VGG from local weight file(s); several files are merged (e.g. the
    torchvision VGG16 ``.pth`` plus the LPIPS ``vgg.pth`` lin heads). Every VGG conv up to
    relu5_3 and all five lin heads must be covered, or a ``WeightsError`` names what is missing.
    """
    paths = _as_paths(weights)
    if not paths:
        raise PerceptualUnavailable(
            "no LPIPS weights given, so the perceptual loss is unavailable",
            f"set {LPIPS_SETTING} ({LPIPS_ENV}) to a local LPIPS-VGG .safetensors/.pth file, "
            "or set the perceptual weight to 0",
        )
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        for key, value in _read_state_dict(path).items():
            ours = _normalise_lpips_key(key)
            if ours is not None:
                merged[ours] = value
    model = LPIPS(init_weights=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(merged))
    if missing:
        raise WeightsError(
            f"LPIPS weights in {', '.join(map(str, paths))} lack {len(missing)} tensors "
            f"(e.g. {', '.join(missing[:3])})",
            "give both the VGG16 features and the five LPIPS lin heads (one file or two)",
        )
    merged = {k: merged[k] for k in expected}
    for key, value in merged.items():
        if value.shape != expected[key].shape:
            raise WeightsError(
                f"LPIPS tensor {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}",
                "the file is not an LPIPS-VGG16 checkpoint",
            )
    model.load_state_dict({k: v.float() for k, v in merged.items()}, assign=True)
    return model.requires_grad_(False)


def write_random_lpips_weights(path: PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised LPIPS-VGG to ``path`` (.safetensors), for offline tests."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        model = LPIPS()
        with torch.no_grad():
            for lin in model.lins:
                lin.weight.abs_()  # real LPIPS heads are non-negative: keep the distance ≥ 0
    path = Path(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------------------------
# The combined stage-1 loss


def official_kl_weight(latent_numel: int, image_numel: int, kl_weight: float = 1e-6) -> float:
    """The official KL weight (per-sample sum, against per-sample-summed L1) in our reduction."""
    return kl_weight * latent_numel / image_numel


def watson_loss(watson: nn.Module, target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Watson-DFT distance of ``recon`` to the reference ``target`` per image element
    (D_b / (3·H·W), the official ``/ numel``), averaged over the batch."""
    return (watson(target, recon) / target[0].numel()).mean()


#: The official Watson-DFT weight (``stage1_repack_dinov3b_f16d32_ffl_watson.yaml``); it keeps
#: its value in our reduction (module doc).
OFFICIAL_WATSON_WEIGHT = 0.005

#: The official FocalFrequencyLoss weight (same yaml); the official reduction is ours, so it keeps
#: its value too (module doc).
OFFICIAL_FFL_WEIGHT = 0.05

#: The numerator and cap of the adaptive GAN weight (module doc): ``official`` = L1 + perceptual,
#: cap 1e4 / (3·H·W); ``all_terms`` = every weighted reconstruction term, cap 1e4.
ADAPTIVE_GAN = ("official", "all_terms")
#: The terms of the official ``nll_loss`` (taming ``LPIPSWithDiscriminator``).
NLL_TERMS = ("l1", "perceptual")


# The official KL weight (1e-6 on a per-sample sum over 16·16·32 latent elements, against L1
# summed over 3·256² pixel values) expressed in our per-element reduction: ≈ 4.17e-8.
OFFICIAL_KL_WEIGHT = official_kl_weight(16 * 16 * 32, 3 * 256 * 256)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the reconstruction loss; every term is reduced the same way (module doc).

    - ``l1 = perceptual = 1``: the official L1 + LPIPS, which were already reduced alike.
    - ``ffl = 1``: the weight of Jiang et al. (the small preset's); the paper preset sets the
      official 0.05 (``OFFICIAL_FFL_WEIGHT``; same reduction as the official, module doc). Next
      to the official summed L1 that 0.05 was ≈ 2·10⁵ times too weak to matter; here, next to a
      per-element L1, it is a real term.
    - ``kl = OFFICIAL_KL_WEIGHT``: the KL is a rate regulariser, not a reconstruction term, and
      the paper keeps it deliberately tiny (it only stops the log-variance collapsing to its
      −30 clamp). This is the official strength translated to our reduction, so its share of the
      gradient is ≪ 1 % by design; raise it for a more Gaussian, lower-rate latent.
    - ``gan = 0.5`` times the adaptive weight, from ``gan_start`` on (official: 0.5 from step 1).
    - ``disc_lead = 0``: the discriminator trains from update ``gan_start − disc_lead`` (at
      least 0) on, ``disc_lead`` updates before the generator's GAN term. The official stage 1
      (``disc_start`` 1; Lightning's ``global_step`` advances once per optimizer step, twice
      per batch, and the discriminator's step of a batch comes second) trains it already on
      the first batch, one update before the GAN term: the paper preset's ``disc_lead`` 1. A
      record without it was 0.
    - ``feature = 0``: the built-in encoder's feature distance, our weights-free stand-in for
      LPIPS (not in the official recipe).
    - ``scale_equivariance = 0``: L1 of the decoded ×2-pooled latent against the ×2-pooled
      image (not in the official recipe; module doc).
    - ``watson = 0``: the Watson-DFT distance (official 0.005, ``OFFICIAL_WATSON_WEIGHT``; needs
      its parameters file, so off unless the caller has one).
    - ``adaptive_gan = "all_terms"``: the numerator and cap of the adaptive GAN weight (module
      doc); ``official`` for the paper preset. A record without it was ``all_terms``.
    """

    l1: float = 1.0
    perceptual: float = 1.0
    ffl: float = 1.0
    ffl_alpha: float = 1.0
    ffl_patch_factor: int = 1
    kl: float = OFFICIAL_KL_WEIGHT
    gan: float = 0.5
    gan_start: int = 0
    disc_lead: int = 0
    adaptive_gan_weight: bool = True
    feature: float = 0.0
    scale_equivariance: float = 0.0
    watson: float = 0.0
    adaptive_gan: str = "all_terms"

    def __post_init__(self) -> None:
        weights = ("l1", "perceptual", "ffl", "kl", "gan", "feature", "scale_equivariance")
        for name in (*weights, "watson"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss weight {name} must be ≥ 0", f"set {name} = 0 to disable")
        if self.ffl_patch_factor < 1 or self.gan_start < 0 or self.disc_lead < 0:
            raise ConfigError("ffl_patch_factor must be ≥ 1, gan_start and disc_lead ≥ 0", None)
        if self.adaptive_gan not in ADAPTIVE_GAN:
            raise ConfigError(
                f"unknown adaptive_gan {self.adaptive_gan!r}",
                f"choose one of: {', '.join(ADAPTIVE_GAN)}",
            )

    @property
    def disc_start(self) -> int:
        """The first update (0-based) at which the discriminator trains (``disc_lead``)."""
        return max(0, self.gan_start - self.disc_lead)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        return cls(**known_config_keys(cls, data, "loss"))

    def without_perceptual(self) -> LossConfig:
        """The same config with the perceptual term switched off (no LPIPS weights)."""
        return LossConfig(**{**asdict(self), "perceptual": 0.0})


@dataclass
class LossOutput:
    """Total loss, each weighted term (with its graph) and detached scalars for logging (tensors,
    so logging costs no device sync until the trainer reads them)."""

    total: torch.Tensor
    weighted: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


class ReconstructionLoss(nn.Module):
    """L1 + LPIPS + FFL + feature distance + Watson-DFT + KL + adaptive-weighted hinge GAN; one
    reduction.

    ``generator_loss`` is minimised by the autoencoder (or refiner), ``discriminator_loss`` by the
    discriminator. The adaptive GAN weight compares the GAN gradient at ``last_layer`` with the
    gradient of the official ``nll_loss`` (L1 + perceptual; ``adaptive_gan = "official"``) or of
    every weighted reconstruction term (``all_terms``). ``features`` is the per-sample feature distance
    (``repackctl.pack.features``), ``watson`` the Watson-DFT distance (``pack.watson``).
    """

    def __init__(
        self,
        config: LossConfig | None = None,
        perceptual: LPIPS | None = None,
        discriminator: nn.Module | None = None,
        features: nn.Module | None = None,
        watson: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or LossConfig()
        if config.watson > 0 and watson is None:
            raise ConfigError(
                "the Watson-DFT weight is > 0 but no Watson-DFT distance was given",
                "load one with repackctl.pack.watson.load_watson(pack.watson_weights), or set "
                "watson = 0",
            )
        if config.perceptual > 0 and perceptual is None:
            raise PerceptualUnavailable(
                "the perceptual loss weight is > 0 but no LPIPS network was given",
                f"load one with load_lpips({LPIPS_SETTING}) or use config.without_perceptual()",
            )
        if config.gan > 0 and discriminator is None:
            raise ConfigError(
                "the GAN weight is > 0 but no discriminator was given",
                "pass a PatchDiscriminator, or set gan = 0",
            )
        if config.feature > 0 and features is None:
            raise ConfigError(
                "the feature-distance weight is > 0 but no feature distance was given",
                "pass repackctl.pack.load.builtin_feature_loss(resolution), or set feature = 0",
            )
        self.perceptual = perceptual
        self.features = features
        self.watson = watson
        self.discriminator = discriminator

    def gan_active(self, step: int) -> bool:
        """Whether update ``step`` has the generator's GAN term (``gan_start`` on)."""
        return self.config.gan > 0 and gan_factor(step, self.config.gan_start) > 0

    def disc_active(self, step: int) -> bool:
        """Whether update ``step`` trains the discriminator (``LossConfig.disc_start`` on)."""
        return self.config.gan > 0 and gan_factor(step, self.config.disc_start) > 0

    def generator_loss(
        self,
        target: torch.Tensor,
        recon: torch.Tensor,
        posterior: DiagonalGaussian | None = None,
        step: int = 0,
        last_layer: torch.Tensor | None = None,
        downscaled: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> LossOutput:
        """Loss of the generator side for images (B, 3, H, W) in [−1, 1]; ``downscaled`` is the
        scale-equivariance pair of :func:`downscaled_pair` (needed when that weight is > 0)."""
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}

        if cfg.l1 > 0:
            terms["l1"] = l1_loss(recon, target)
            weighted["l1"] = cfg.l1 * terms["l1"]
        if cfg.perceptual > 0:
            terms["perceptual"] = self.perceptual(recon, target).mean()
            weighted["perceptual"] = cfg.perceptual * terms["perceptual"]
        if cfg.ffl > 0:
            terms["ffl"] = focal_frequency_loss(recon, target, cfg.ffl_alpha, cfg.ffl_patch_factor)
            weighted["ffl"] = cfg.ffl * terms["ffl"]
        if cfg.feature > 0:
            terms["feature"] = self.features(recon, target).mean()
            weighted["feature"] = cfg.feature * terms["feature"]
        if cfg.watson > 0:
            terms["watson"] = watson_loss(self.watson, target, recon)
            weighted["watson"] = cfg.watson * terms["watson"]
        if cfg.scale_equivariance > 0:
            if downscaled is None:
                raise ConfigError(
                    "the scale-equivariance weight is > 0 but no downscaled pair was given",
                    "pass downscaled=downscaled_pair(model.decode, z, target), or set it to 0",
                )
            terms["scale_equivariance"] = l1_loss(*downscaled)
            weighted["scale_equivariance"] = cfg.scale_equivariance * terms["scale_equivariance"]
        rec_terms = dict(weighted)  # the reconstruction terms: what the adaptive weight sees

        if cfg.kl > 0 and posterior is not None and not posterior.deterministic:
            terms["kl"] = posterior.kl_per_element()
            weighted["kl"] = cfg.kl * terms["kl"]

        if self.gan_active(step):
            # Discriminator parameters get gradients here too; the trainer steps only the
            # generator's optimiser with this loss (and zeroes the discriminator's grads).
            terms["gan"] = hinge_g_loss(self.discriminator(recon))
            d_weight = self._gan_weight(rec_terms, terms["gan"], recon, last_layer)
            weighted["gan"] = cfg.gan * d_weight * terms["gan"]
            logs["loss/gan_adaptive_weight"] = d_weight.detach()

        total = sum(weighted.values()) if weighted else recon.new_zeros(())
        logs.update({f"loss/{k}": v.detach() for k, v in terms.items()})
        logs["loss/total"] = total.detach()
        return LossOutput(total=total, weighted=weighted, logs=logs)

    def _gan_weight(
        self,
        weighted: dict[str, torch.Tensor],
        g_loss: torch.Tensor,
        recon: torch.Tensor,
        last_layer: torch.Tensor | None,
    ) -> torch.Tensor:
        """The adaptive GAN weight of ``adaptive_gan`` (module doc); 1 when it is off."""
        if not self.config.adaptive_gan_weight:
            return recon.new_ones(())
        if last_layer is None:
            raise ConfigError(
                "the adaptive GAN weight needs the decoder's last layer",
                "pass last_layer=model.last_layer, or set adaptive_gan_weight = False",
            )
        if self.config.adaptive_gan == "official":
            keys, cap = NLL_TERMS, official_adaptive_max(recon[0].numel())
        else:
            keys, cap = tuple(weighted), ADAPTIVE_WEIGHT_MAX
        nll = sum((weighted[k] for k in keys if k in weighted), recon.new_zeros(()))
        if not torch.is_grad_enabled() or not nll.requires_grad:
            return recon.new_zeros(())  # evaluation: no gradients to compare
        return adaptive_gan_weight(nll, g_loss, last_layer, cap)

    def discriminator_loss(
        self, target: torch.Tensor, recon: torch.Tensor, step: int = 0
    ) -> LossOutput:
        """Hinge loss of the discriminator on real ``target`` and detached ``recon`` (0 before
        the discriminator starts: ``LossConfig.disc_start``)."""
        if not self.disc_active(step):
            zero = target.new_zeros(())
            return LossOutput(total=zero, weighted={}, logs={"loss/disc": zero})
        disc = self.discriminator
        if getattr(getattr(disc, "config", None), "norm", None) == "batch":
            # BatchNorm (the official discriminator): real and fake in separate forwards, as the
            # official code does, so each is normalised with its own batch statistics
            real, fake = disc(target), disc(recon.detach())  # (B, 1, h, w) each
        else:
            # GroupNorm normalises each sample on its own: one forward equals two
            logits = disc(torch.cat([target, recon.detach()], dim=0))  # (2B, 1, h, w)
            real, fake = logits.chunk(2, dim=0)
        loss = hinge_d_loss(real, fake)
        return LossOutput(
            total=loss,
            weighted={"disc": loss},
            logs={
                "loss/disc": loss.detach(),
                "disc/logits_real": real.detach().mean(),
                "disc/logits_fake": fake.detach().mean(),
            },
        )
