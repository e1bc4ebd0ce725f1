"""The refiner's weights-free perceptual term (refine.feature_weight): a multi-layer feature
distance in the built-in encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repackctl.errors import ConfigError
from repackctl.refine.features import EncoderFeatureLoss, builtin_feature_loss
from repackctl.settings import resolve_settings


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = ((xx // 2) % 2).float()  # (R, R)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    return (stripes * colour - (1 - stripes) * colour).clamp(-1, 1)  # (n, 3, R, R)


def test_feature_distance_zero_for_identical_higher_for_blur_and_has_gradients():
    loss = builtin_feature_loss(32)
    x = _images()
    assert torch.allclose(loss(x, x), torch.zeros(4), atol=1e-6)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(
        -1, 1
    )
    d_blur, d_noise = loss(blurred, x), loss(noisy, x)
    assert d_blur.shape == (4,) and (d_blur > d_noise).all() and (d_noise > 0).all()
    y = blurred.clone().requires_grad_(True)
    loss(y, x).mean().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.encoder.training  # the encoder never leaves eval mode


def test_feature_distance_needs_a_conv_stem_encoder_and_setting_is_declared():
    with pytest.raises(ConfigError):
        EncoderFeatureLoss(torch.nn.Linear(2, 2))
    s = resolve_settings(flags={"refine.feature_weight": 0.5}, environ={}).settings
    assert s.refine.feature_weight == 0.5
    assert resolve_settings(flags={}, environ={}).settings.refine.feature_weight == 0.0
