"""PatchGAN discriminator, hinge losses and the adaptive GAN weight.

The discriminator is the pix2pix ``NLayerDiscriminator`` (Isola et al. 2017) as used by
taming-transformers / LDM and by guanfangdong/RePack-then-Refine (``stage1/repack/losses/
perceptual.py`` with 64 base channels, ``stage3/networks.py`` ``PatchDiscriminator`` with 128):
4×4 convs with stride 2 (then 1), LeakyReLU 0.2, one logit per overlapping patch.

Normalisation: the official models use BatchNorm. Under data parallelism without SyncBatchNorm
each process normalises with the statistics of its own few samples (8 per GPU), real and fake
batches are normalised separately (so the discriminator can tell them apart from batch
statistics alone), DDP overwrites the running statistics with rank 0's, and the result changes
with the number of processes. GroupNorm normalises each sample on its own: the same function for
any batch size or process count, no buffers to synchronise. ``norm="batch"`` reproduces the
official discriminators and is what the ``paper`` presets pick (``pack.disc_norm``,
``refine.disc_norm``); ``norm="group"`` is the library default and the ``small`` presets' choice.
With BatchNorm the discriminator sees real and fake images in separate forwards, as the official
code does (``pack.losses.ReconstructionLoss.discriminator_loss``), so each batch is normalised
with its own statistics.

Initialisation (``init``): ``dcgan`` is taming's ``weights_init`` (conv N(0, 0.02), norm scale
N(1, 0.02)) with no bias on a conv followed by a norm, as the official stage 1
``NLayerDiscriminator`` (``pack``, every preset); ``pytorch`` keeps PyTorch's default init and a
bias on every conv, as the official stage 3 ``PatchDiscriminator`` (``refine.disc_init``: the
``paper`` preset's; ``small`` keeps ``dcgan``). A config recorded without it was ``dcgan``.

The adaptive weight (Esser et al. 2021, VQGAN eq. 7) balances the generator's GAN term against
the reconstruction term by the ratio of their gradient norms at the decoder's last layer. The
official (taming ``calculate_adaptive_weight``, RePack ``perceptual.py``) clamps it to [0, 1e4];
its numerator is a loss *summed* over the 3·H·W values of each image, ours a per-element mean
(``pack.losses``), so our weight is the official one divided by 3·H·W and the official cap
reads 1e4 / (3·H·W) (``official_adaptive_max``; ≈ 0.051 at 256²).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repackctl.errors import ConfigError
from repackctl.pack.decoder import group_norm
from repackctl.pack.projection import known_config_keys

NORMS = ("group", "batch")
#: the discriminator's initialisations (module doc): taming's DCGAN init, PyTorch's defaults
INITS = ("dcgan", "pytorch")
ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the PatchGAN discriminator."""

    in_channels: int = 3
    base_channels: int = 64
    n_layers: int = 3
    norm: str = "group"
    max_groups: int = 32
    init: str = "dcgan"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(
                f"unknown discriminator norm {self.norm!r}", f"choose one of: {', '.join(NORMS)}"
            )
        if self.init not in INITS:
            raise ConfigError(
                f"unknown discriminator init {self.init!r}", f"choose one of: {', '.join(INITS)}"
            )
        if self.n_layers < 1 or self.base_channels < 1:
            raise ConfigError("the discriminator needs n_layers ≥ 1 and base_channels ≥ 1", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        return cls(**known_config_keys(cls, data, "discriminator"))


# the side the PatchGAN's two last 4×4 convolutions (stride 1, padding 1) need: 3 → 2 → 1
MIN_LAST_SIDE = 3


def max_disc_layers(side: int) -> int:
    """The most stride-2 layers (``n_layers``) a PatchGAN can have on images of ``side`` px:
    the first conv and the ``n_layers − 1`` strided ones halve the side ``n_layers`` times,
    and what is left must hold the two last 4×4 convolutions (0: no PatchGAN fits)."""
    layers = 0
    while side // 2 ** (layers + 1) >= MIN_LAST_SIDE:
        layers += 1
    return layers


def check_disc_depth(config: DiscriminatorConfig, side: int, setting: str, start: int) -> None:
    """Refuse a PatchGAN too deep for images of ``side`` px before anything is written: its
    convolutions failed with a traceback at the first GAN step (``start``), after every step
    before it was trained and possibly with no checkpoint yet. ``setting``: the depth's name."""
    most = max_disc_layers(side)
    if config.n_layers <= most:
        return
    left = side // 2**config.n_layers
    fits = f"pass --disc-layers {most} or fewer at {side} px, or " if most else ""
    raise ConfigError(
        f"{setting} {config.n_layers} is too deep for {side} px images: the PatchGAN halves the "
        f"side {config.n_layers} times, to {left} px, and its last two 4×4 convolutions need "
        f"{MIN_LAST_SIDE} px; it would fail at the first GAN step ({start})",
        f"{fits}--gan-weight 0 to train without the GAN",
    )


class PatchDiscriminator(nn.Module):
    """NLayer PatchGAN: image (B, 3, H, W) → patch logits (B, 1, H', W')."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        ch = config.base_channels

        def norm(c: int) -> nn.Module:
            if config.norm == "batch":
                return nn.BatchNorm2d(c)
            return group_norm(c, config.max_groups)

        # No norm after the first conv and none before the logits (pix2pix); under the DCGAN
        # init, convs followed by a norm carry no bias (the norm's shift replaces it); under
        # PyTorch's, every conv has one (the official stage 3 PatchDiscriminator).
        bias = config.init == "pytorch"
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, ch, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, config.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < config.n_layers else 1
            layers += [
                nn.Conv2d(ch * prev, ch * mult, 4, stride=stride, padding=1, bias=bias),
                norm(ch * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ch * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        if config.init == "dcgan":
            self.initialize()  # else the layers keep PyTorch's default init

    def initialize(self) -> None:
        """DCGAN init (as taming's ``weights_init``): conv N(0, 0.02), norm scale N(1, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, 1, H', W')


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ½·(mean relu(1 − real) + mean relu(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: −mean(fake logits)."""
    return -logits_fake.mean()


def official_adaptive_max(image_numel: int) -> float:
    """The official cap 1e4 on a weight whose numerator is summed over an image's
    ``image_numel`` = 3·H·W values, in our per-element reduction: 1e4 / (3·H·W)."""
    return ADAPTIVE_WEIGHT_MAX / image_numel


def adaptive_gan_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = ADAPTIVE_WEIGHT_MAX,
) -> torch.Tensor:
    """‖∇_last nll‖ / (‖∇_last g‖ + 1e-4), clamped to [0, ``max_weight``] and detached (VQGAN
    eq. 7)."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, max_weight).detach()


def gan_factor(step: int, start: int) -> float:
    """0 before the GAN starts (``step < start``), 1 from then on."""
    return 1.0 if step >= start else 0.0
