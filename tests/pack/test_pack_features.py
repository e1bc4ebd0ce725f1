"""The weights-free perceptual term of the pack and the refiner (pack.feature_weight,
refine.feature_weight): a multi-layer feature distance in the built-in encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repackctl.errors import ConfigError
from repackctl.pack.features import EncoderFeatureLoss
from repackctl.pack.load import builtin_feature_loss
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


def test_reconstruction_loss_adds_the_feature_distance_as_a_reconstruction_term():
    from repackctl.pack.losses import LossConfig, ReconstructionLoss

    features = builtin_feature_loss(32)
    x = _images()
    y = torch.flip(x, dims=(3,)).requires_grad_(True)  # another image of the same colours
    cfg = LossConfig(perceptual=0.0, gan=0.0, ffl=0.0, kl=0.0, feature=0.5)
    with pytest.raises(ConfigError, match="feature"):
        ReconstructionLoss(cfg)  # a weight without the distance is refused
    out = ReconstructionLoss(cfg, features=features).generator_loss(x, y)
    dist = features(y, x).mean()
    torch.testing.assert_close(out.weighted["feature"], 0.5 * dist)
    torch.testing.assert_close(out.total, out.weighted["l1"] + 0.5 * dist)
    out.total.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    # off (the official recipe and old checkpoints' configs): no term, nothing built
    old = {k: v for k, v in cfg.to_dict().items() if k != "feature"}
    assert LossConfig.from_dict(old).feature == 0.0
    plain = ReconstructionLoss(LossConfig.from_dict(old)).generator_loss(x, y)
    assert "feature" not in plain.weighted
    # the preset decides: small (the built-in encoder) 1, paper 0, a flag wins over both
    assert resolve_settings(flags={}, environ={}).settings.pack.feature_weight == 1.0
    paper = resolve_settings(flags={"pack.preset": "paper"}, environ={}).settings
    assert paper.pack.feature_weight == 0.0
    flag = resolve_settings(flags={"pack.feature_weight": 0.25}, environ={}).settings
    assert flag.pack.feature_weight == 0.25
