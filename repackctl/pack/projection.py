"""Token projections C → d: the RePack KL projection and the projection registry.

RePack (guanfangdong/RePack-then-Refine, ``stage1/repack/modules/repack_blocks.py`` and
``distributions.py``) packs every frozen-encoder patch token on its own: one affine map
C → 2d gives the mean and the log-variance of a diagonal Gaussian over d channels (d = 32 in the
paper), the log-variance clamped to [−30, 20] like the LDM ``DiagonalGaussianDistribution``.
The map is linear on purpose (the paper's point is that the packed latent stays a linear view of
the encoder's features). It comes in two forms (``form``, the ``pack.projection_form`` setting):

* ``official`` (the ``paper`` preset): as the official code, two stacked 1×1 maps, the encoder's
  ``conv_out`` C → 2d without bias (weight (2d, C, 1, 1)) then ``quant_conv`` 2d → 2d with bias
  (weight (2d, 2d, 1, 1)), each with PyTorch's default Conv2d init (``stage1/repack/modules/
  repack_blocks.py``, ``stage1/repack/models/autoencoder.py``); the decoder then has the
  official ``post_quant_conv`` (``DecoderConfig(post_quant_conv=True)``, set with the form).
  The same function class as ``folded``, but another parameterisation, initialisation and
  Adam dynamics: only this form trains as the official recipe does.
* ``folded`` (the ``small`` preset, and every run started before the setting existed): the
  composition written as one ``nn.Linear(C, 2d)``, and no ``post_quant_conv``.

``whiten=True`` (our option, off in the ``paper`` preset; either form) first maps the tokens
through a fixed ZCA whitening fitted on the training tokens (``repackctl.pack.pca.
token_whitening``). The composition is still one affine map of the tokens, so the model class is
unchanged; what changes is the conditioning of its training. Small encoders keep appearance
(chroma) in low-variance token directions: with the built-in encoder the top 8 principal
directions carry 85 % of the variance, yet a patch's chroma reads from them at held-out R² −0.01,
against 0.795 from all 96 channels (``scripts/colour_readout.py``). A randomly initialised map
learns such directions slowly; after whitening every direction starts with the same scale.

Legend: B batch, T tokens (= h·w), C token channels, d latent channels, h×w token grid.

Adding a projection: write an ``nn.Module`` with ``in_channels``, ``latent_channels``, ``kind``
attributes, ``encode(tokens, grid=None) -> DiagonalGaussian`` with mean (B, d, h, w), and
``ProjectionConfig``-compatible construction ``Cls(in_channels=..., latent_channels=...)`` (any
fitted numbers live in persistent buffers so ``load_state_dict`` restores them). Then add
``"<id>": "<module>:<Class>"`` to ``PROJECTIONS``; entries are imported lazily by
``build_projection``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repackctl.errors import ConfigError

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussian:
    """Posterior over the packed latent: independent Gaussians per channel and position."""

    def __init__(
        self, mean: torch.Tensor, logvar: torch.Tensor | None = None, deterministic: bool = False
    ) -> None:
        self.mean = mean  # (B, d, h, w)
        self.deterministic = deterministic or logvar is None
        if self.deterministic:
            # A deterministic projection (PCA) has no spread: std = 0, the sample is the mode.
            self.logvar = None
            self.std = torch.zeros_like(mean)  # (B, d, h, w)
        else:
            self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)  # (B, d, h, w)
            self.std = torch.exp(0.5 * self.logvar)  # (B, d, h, w)

    @property
    def var(self) -> torch.Tensor:
        return self.std.pow(2)  # (B, d, h, w)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std·ε with ε ~ N(0, I) drawn from ``generator`` (reproducible when seeded; the
        generator must live on the mean's device)."""
        if self.deterministic:
            return self.mean
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )  # (B, d, h, w)
        return self.mean + self.std * eps  # (B, d, h, w)

    def mode(self) -> torch.Tensor:
        return self.mean  # (B, d, h, w)

    def kl_per_sample(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) of each sample, summed over channels and positions: (B,)."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])  # (B,)
        kl = 0.5 * (self.mean.pow(2) + torch.exp(self.logvar) - 1.0 - self.logvar)  # (B, d, h, w)
        return kl.flatten(1).sum(1)  # (B,)

    def kl(self) -> torch.Tensor:
        """Per-sample KL summed over dimensions, averaged over the batch (the LDM convention)."""
        return self.kl_per_sample().mean()

    def kl_per_element(self) -> torch.Tensor:
        """Per-sample KL averaged over dimensions, averaged over the batch (our loss reduction)."""
        return self.kl_per_sample().mean() / self.mean[0].numel()


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, T, C) tokens or a (B, C, h, w) grid → (B, h, w, C) channels-last grid."""
    if tokens.dim() == 4:
        return tokens.permute(0, 2, 3, 1)  # (B, h, w, C)
    if tokens.dim() != 3:
        raise ConfigError(
            f"expected tokens (B, T, C) or a grid (B, C, h, w), got shape {tuple(tokens.shape)}",
            "pass the encoder's patch tokens without CLS/register tokens",
        )
    b, t, c = tokens.shape
    if grid is None:
        side = math.isqrt(t)
        if side * side != t:
            raise ConfigError(
                f"{t} tokens do not form a square grid",
                "pass grid=(h, w) for non-square token grids, or drop the prefix tokens",
            )
        grid = (side, side)
    if grid[0] * grid[1] != t:
        raise ConfigError(f"grid {grid} does not hold {t} tokens", "check the encoder's grid")
    return tokens.reshape(b, grid[0], grid[1], c)  # (B, h, w, C)


# the forms of the repack projection (see the module docstring); folded: runs that recorded none
PROJECTION_FORMS = ("official", "folded")
DEFAULT_FORM = "folded"


class RePackProjection(nn.Module):
    """Per-token affine map C → (mean, log-variance) of d channels each, in one of two
    parameterisations (``form``): ``folded`` one ``proj`` Linear(C, 2d); ``official`` the
    official ``conv_out`` (2d, C, 1, 1) without bias then ``quant_conv`` (2d, 2d, 1, 1) + bias,
    built as the official 1×1 Conv2d layers so their shapes, init and state-dict layout match."""

    kind = "repack"

    def __init__(
        self,
        in_channels: int = 768,
        latent_channels: int = 32,
        whiten: bool = False,
        form: str = DEFAULT_FORM,
    ) -> None:
        super().__init__()
        check_form(form)
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.whiten = whiten
        self.form = form
        two_d = 2 * latent_channels
        if form == "official":
            self.conv_out = nn.Conv2d(in_channels, two_d, 1, bias=False)
            self.quant_conv = nn.Conv2d(two_d, two_d, 1)
        else:
            self.proj = nn.Linear(in_channels, two_d)
        if whiten:
            # Fixed buffers, fitted before training (``set_whitening``) and restored from every
            # checkpoint; ``whitening_fitted`` refuses an unfitted use instead of a silent identity.
            self.register_buffer("token_mean", torch.zeros(in_channels))  # (C,)
            self.register_buffer("token_whitening", torch.eye(in_channels))  # (C, C)
            self.register_buffer("whitening_fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def set_whitening(self, mean: torch.Tensor, matrix: torch.Tensor) -> None:
        """Fix the token whitening ``x ↦ (x − mean) @ matrix``: mean (C,), matrix (C, C)."""
        c = self.in_channels
        if not self.whiten or tuple(mean.shape) != (c,) or tuple(matrix.shape) != (c, c):
            raise ConfigError(
                f"cannot set a whitening of shape {tuple(matrix.shape)} on a projection with "
                f"whiten={self.whiten} and {c} channels",
                "fit it with repackctl.pack.pca.token_whitening on tokens of this encoder",
            )
        self.token_mean.copy_(mean)
        self.token_whitening.copy_(matrix)
        self.whitening_fitted.fill_(True)

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> DiagonalGaussian:
        x = tokens_to_grid(tokens, grid)  # (B, h, w, C)
        if x.shape[-1] != self.in_channels:
            raise ConfigError(
                f"tokens have {x.shape[-1]} channels, the projection expects {self.in_channels}",
                "the cache entry was made with another encoder than this pack model",
            )
        x = x.to(self._dtype())  # (B, h, w, C)
        if self.whiten:
            if not bool(self.whitening_fitted):
                raise ConfigError(
                    "the projection's token whitening has not been fitted",
                    "fit it with repackctl.pack.pca.token_whitening and set_whitening",
                )
            x = (x - self.token_mean) @ self.token_whitening  # (B, h, w, C)
        moments = self._moments(x).permute(0, 3, 1, 2)  # (B, 2d, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B, d, h, w) each
        return DiagonalGaussian(mean, logvar)

    def _dtype(self) -> torch.dtype:
        return (self.conv_out if self.form == "official" else self.proj).weight.dtype

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last tokens (B, h, w, C) → moments (B, h, w, 2d). The official 1×1 convs
        are applied as the per-token matrix products they are (channels-last, no transpose)."""
        if self.form != "official":
            return self.proj(x)  # (B, h, w, 2d)
        h = F.linear(x, self.conv_out.weight.flatten(1))  # (B, h, w, 2d)
        return F.linear(h, self.quant_conv.weight.flatten(1), self.quant_conv.bias)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> DiagonalGaussian:
        return self.encode(tokens, grid)


# id → "module:Class", imported only when asked for (see the module docstring to add one).
PROJECTIONS: dict[str, str] = {
    "repack": "repackctl.pack.projection:RePackProjection",
    "pca": "repackctl.pack.pca:PCAProjection",
}


@dataclass(frozen=True)
class ProjectionConfig:
    """Which projection and its sizes; the fitted/learned numbers live in the state dict."""

    kind: str = "repack"
    in_channels: int = 768
    latent_channels: int = 32
    whiten: bool = False  # ZCA-whiten the tokens first (repack only; see the module docstring)
    form: str = DEFAULT_FORM  # official | folded (repack only; see the module docstring)

    def __post_init__(self) -> None:
        if self.kind not in PROJECTIONS:
            raise ConfigError(
                f"unknown projection {self.kind!r}",
                f"choose one of: {', '.join(sorted(PROJECTIONS))}",
            )
        check_form(self.form)
        if self.form != DEFAULT_FORM and self.kind != "repack":
            raise ConfigError(
                f"the {self.form} projection form is an option of the repack projection, not of "
                f"{self.kind!r}",
                f"set pack.projection_form to {DEFAULT_FORM} with this method",
            )
        if self.whiten and self.kind != "repack":
            raise ConfigError(
                f"token whitening is an option of the repack projection, not of {self.kind!r}",
                "set pack.whiten to false with this method",
            )
        if self.in_channels < 1 or self.latent_channels < 1:
            raise ConfigError(
                f"projection sizes must be positive, got {self.in_channels} → "
                f"{self.latent_channels}",
                "set latent_channels to e.g. 32",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectionConfig:
        return cls(**known_config_keys(cls, data, "projection"))


def check_form(form: str) -> None:
    """Refuse an unknown projection form (a typo must not build the other one)."""
    if form not in PROJECTION_FORMS:
        raise ConfigError(
            f"unknown projection form {form!r}", f"choose one of: {', '.join(PROJECTION_FORMS)}"
        )


def projection_class(kind: str) -> type[nn.Module]:
    """Import and return the class registered under ``kind``."""
    if kind not in PROJECTIONS:
        raise ConfigError(
            f"unknown projection {kind!r}", f"choose one of: {', '.join(sorted(PROJECTIONS))}"
        )
    module_name, attr = PROJECTIONS[kind].split(":")
    return getattr(importlib.import_module(module_name), attr)


def build_projection(config: ProjectionConfig) -> nn.Module:
    """Build an (unfitted / freshly initialised) projection from its config."""
    cls = projection_class(config.kind)
    extra: dict[str, Any] = {"whiten": True} if config.whiten else {}
    if config.form != DEFAULT_FORM:
        extra["form"] = config.form
    return cls(in_channels=config.in_channels, latent_channels=config.latent_channels, **extra)


def projection_config(projection: nn.Module) -> ProjectionConfig:
    """The config that rebuilds ``projection``."""
    return ProjectionConfig(
        kind=projection.kind,
        in_channels=projection.in_channels,
        latent_channels=projection.latent_channels,
        whiten=bool(getattr(projection, "whiten", False)),
        form=getattr(projection, "form", DEFAULT_FORM),
    )


def known_config_keys(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """Reject unknown keys instead of silently ignoring them (a typo must not pass)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {what} config key(s): {', '.join(unknown)}",
            f"valid keys: {', '.join(sorted(names))}",
        )
    return dict(data)
