"""Closed-form PCA of frozen-encoder tokens: the deterministic baseline projection C → d.

The RePack paper compares its learned projection with PCA of the DINOv3 tokens (linear probe:
PCA-32 56.13 % vs RePack-32 42.48 %; the first 32 components explain about 77 % of the variance).
PCA here is fitted from a stream of token batches: the sum and the sum of outer products are
accumulated in float64, so the result does not depend on how the data was split into batches (or
across processes: ``merge`` adds two accumulators) beyond float64 rounding. Components come from
``torch.linalg.eigh`` of the covariance, sorted by decreasing variance, each with its
largest-magnitude entry made positive so refits give identical signs.

Legend: N tokens seen, C token channels, d components, B batch, T tokens per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from repackctl.errors import ConfigError
from repackctl.pack.projection import DiagonalGaussian, tokens_to_grid

# Whitening floor relative to the largest token variance (``token_whitening``).
WHITEN_REL_EPS = 1e-3


@dataclass(frozen=True)
class PCAResult:
    """A fitted PCA: mean, components and the variance each component explains."""

    mean: torch.Tensor  # (C,) float64
    components: torch.Tensor  # (d, C) float64, rows orthonormal
    explained_variance: torch.Tensor  # (d,) float64, decreasing
    explained_variance_ratio: torch.Tensor  # (d,) float64, share of the total variance
    count: int

    @property
    def cumulative_ratio(self) -> float:
        return float(self.explained_variance_ratio.sum())


class PCAAccumulator:
    """Running float64 sums over token batches; ``fit(d)`` turns them into a ``PCAResult``."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64)  # (C,)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)  # (C, C)

    def update(self, tokens: torch.Tensor) -> None:
        """Add tokens (..., C): any leading shape, e.g. (B, T, C) or (N, C)."""
        if tokens.shape[-1] != self.channels:
            raise ConfigError(
                f"tokens have {tokens.shape[-1]} channels, the PCA was set up for {self.channels}",
                "fit the PCA on features of one encoder",
            )
        x = tokens.detach().reshape(-1, self.channels).to("cpu", torch.float64)  # (N, C)
        self.count += x.shape[0]
        self.sum += x.sum(0)  # (C,)
        self.outer += x.T @ x  # (C, C)

    def merge(self, other: PCAAccumulator) -> None:
        """Add another accumulator (e.g. one gathered from another process)."""
        if other.channels != self.channels:
            raise ConfigError("cannot merge PCA accumulators of different widths", None)
        self.count += other.count
        self.sum += other.sum
        self.outer += other.outer

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance (divides by N − 1, like ``np.cov``): (C, C) float64."""
        if self.count < 2:
            raise ConfigError(
                f"PCA needs at least 2 tokens, got {self.count}", "fit on more samples"
            )
        mean = self.sum / self.count  # (C,)
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)  # (C, C)
        return 0.5 * (cov + cov.T)  # (C, C) exactly symmetric for eigh

    def fit(self, components: int) -> PCAResult:
        if not 1 <= components <= self.channels:
            raise ConfigError(
                f"cannot keep {components} components of {self.channels}-channel tokens",
                f"choose latent_channels between 1 and {self.channels}",
            )
        cov = self.covariance()  # (C, C)
        evals, evecs = torch.linalg.eigh(cov)  # ascending: (C,), (C, C) columns
        order = torch.argsort(evals, descending=True)
        evals = evals[order].clamp_min(0.0)  # (C,) tiny negatives are rounding
        evecs = evecs[:, order]  # (C, C)
        comps = evecs[:, :components].T.contiguous()  # (d, C)
        comps = _fix_signs(comps)
        total = evals.sum()
        ratio = evals[:components] / total if total > 0 else torch.zeros(components)
        return PCAResult(
            mean=self.sum / self.count,
            components=comps,
            explained_variance=evals[:components].clone(),
            explained_variance_ratio=ratio.to(torch.float64),
            count=self.count,
        )


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Make each row's largest-magnitude entry positive (eigenvectors are defined up to sign)."""
    idx = components.abs().argmax(dim=1)  # (d,)
    signs = torch.sign(components.gather(1, idx[:, None]))  # (d, 1)
    signs[signs == 0] = 1.0
    return components * signs  # (d, C)


def fit_pca(batches: Iterable[torch.Tensor], components: int) -> PCAResult:
    """PCA of all tokens in ``batches`` (each (..., C)) to ``components`` dimensions."""
    acc: PCAAccumulator | None = None
    for tokens in batches:
        if acc is None:
            acc = PCAAccumulator(tokens.shape[-1])
        acc.update(tokens)
    if acc is None:
        raise ConfigError("PCA got no token batches", "check that the cache entry is not empty")
    return acc.fit(components)


def token_whitening(
    result: PCAResult, rel_eps: float = WHITEN_REL_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening from a full-rank PCA: ``(mean (C,), W (C, C))`` float32 with
    ``W = V diag((λ + ε)^−½) Vᵀ``, ``ε = rel_eps · λ_max``.

    ``ε`` keeps directions with (nearly) no variance from being blown up to noise; ZCA (rather
    than PCA whitening) keeps the whitened tokens closest to the originals.
    """
    d, c = result.components.shape
    if d != c:
        raise ConfigError(
            f"whitening needs all {c} principal components, the fit kept {d}",
            "fit the PCA with components equal to the token width",
        )
    lam = result.explained_variance.clamp_min(0.0)  # (C,)
    eps = rel_eps * float(lam.max()) if float(lam.max()) > 0 else rel_eps
    v = result.components.T  # (C, C) columns are components
    matrix = v @ torch.diag((lam + eps).rsqrt()) @ v.T  # (C, C)
    return result.mean.float(), matrix.float()


class PCAProjection(nn.Module):
    """Frozen PCA projection with the RePack projection's interface (deterministic posterior)."""

    kind = "pca"

    def __init__(self, in_channels: int = 768, latent_channels: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        # Buffers, not parameters: PCA is fitted in closed form and never trained. They are
        # persistent so a checkpoint restores the fit; ``fitted`` guards against an unfitted use.
        self.register_buffer("mean", torch.zeros(in_channels))  # (C,)
        self.register_buffer("components", torch.zeros(latent_channels, in_channels))  # (d, C)
        self.register_buffer("explained_variance_ratio", torch.zeros(latent_channels))  # (d,)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_result(cls, result: PCAResult) -> PCAProjection:
        d, c = result.components.shape
        module = cls(in_channels=c, latent_channels=d)
        module.set_fit(result)
        return module

    @torch.no_grad()
    def set_fit(self, result: PCAResult) -> None:
        if tuple(result.components.shape) != (self.latent_channels, self.in_channels):
            raise ConfigError(
                f"PCA fit has shape {tuple(result.components.shape)}, the projection expects "
                f"{(self.latent_channels, self.in_channels)}",
                "fit with the projection's latent_channels",
            )
        self.mean.copy_(result.mean)
        self.components.copy_(result.components)
        self.explained_variance_ratio.copy_(result.explained_variance_ratio)
        self.fitted.fill_(True)

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> DiagonalGaussian:
        if not bool(self.fitted):
            raise ConfigError(
                "the PCA projection has not been fitted",
                "fit it with repackctl.pack.pca.fit_pca(...) and PCAProjection.set_fit",
            )
        x = tokens_to_grid(tokens, grid)  # (B, h, w, C)
        if x.shape[-1] != self.in_channels:
            raise ConfigError(
                f"tokens have {x.shape[-1]} channels, the PCA expects {self.in_channels}",
                "the cache entry was made with another encoder than this pack model",
            )
        x = x.to(self.components.dtype) - self.mean  # (B, h, w, C)
        z = (x @ self.components.T).permute(0, 3, 1, 2).contiguous()  # (B, d, h, w)
        return DiagonalGaussian(z, deterministic=True)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> DiagonalGaussian:
        return self.encode(tokens, grid)
