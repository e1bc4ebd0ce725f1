"""Latent-Guided Refiner network: shapes, output modes, config round trip, size, latent rule."""

from __future__ import annotations

import json

import pytest
import torch

from repackctl.errors import ConfigError
from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig, count_parameters


def _tiny(resolution: int, latent_channels: int = 4, **kw) -> RefinerConfig:
    return RefinerConfig(
        latent_channels=latent_channels, resolution=resolution, base_channels=8, **kw
    )


@pytest.mark.parametrize(
    ("resolution", "grid", "attn"),
    [(32, 4, (8, 4)), (64, 8, (16, 8)), (256, 16, (64, 32))],
)
def test_refiner_shapes(resolution: int, grid: int, attn: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = LatentGuidedRefiner(_tiny(resolution, attn_resolutions=attn))
    assert (
        sum(isinstance(m, torch.nn.Module) and "Attn" in type(m).__name__ for m in net.modules())
        == 3
    )
    out = net(torch.rand(1, 3, resolution, resolution) * 2 - 1, torch.randn(1, 4, grid, grid))
    assert out.shape == (1, 3, resolution, resolution)
    assert out.abs().max() < 1.0  # image mode ends in tanh


def test_residual_refiner_is_identity_at_init_and_can_learn() -> None:
    torch.manual_seed(0)
    net = LatentGuidedRefiner(_tiny(32, output="residual", attn_resolutions=(8,)))
    decoded = torch.randn(2, 3, 32, 32) * 1.5  # outside [−1, 1]: no tanh in residual mode
    out = net(decoded, torch.randn(2, 4, 4, 4))
    assert torch.equal(out, decoded)
    (out - torch.zeros_like(out)).pow(2).mean().backward()
    assert net.conv_out.weight.grad.abs().sum() > 0  # zero-initialised, not dead


def test_refiner_config_round_trip() -> None:
    torch.manual_seed(0)
    cfg = _tiny(32, channel_mult=(1, 2), attn_resolutions=(8,), output="residual")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["latent_convention"] == "raw"
    assert RefinerConfig.from_dict(data) == cfg
    net = LatentGuidedRefiner(cfg)
    torch.nn.init.normal_(net.conv_out.weight)  # leave the identity, so the check means something
    rebuilt = LatentGuidedRefiner(RefinerConfig.from_dict(data))
    rebuilt.load_state_dict(net.state_dict())
    x, z = torch.randn(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(rebuilt(x, z), net(x, z))
    with pytest.raises(ConfigError, match="unknown refiner config key"):
        RefinerConfig.from_dict({**data, "outputs": "image"})


def test_official_refiner_has_about_55_6m_parameters() -> None:
    with torch.device("meta"):
        n = count_parameters(LatentGuidedRefiner(RefinerConfig()))
    assert abs(n - 55.6e6) / 55.6e6 < 0.10, n


def test_refiner_enforces_raw_latents_and_channels() -> None:
    with pytest.raises(ConfigError, match="raw"):
        RefinerConfig(latent_convention="normalized")
    net = LatentGuidedRefiner(_tiny(32, attn_resolutions=()))
    net.check_latents("raw")
    with pytest.raises(ConfigError, match="de-normalise"):
        net.check_latents("normalized")
    with pytest.raises(ConfigError, match="channels"):
        net(torch.zeros(1, 3, 32, 32), torch.zeros(1, 5, 4, 4))
    with pytest.raises(ConfigError, match="output mode"):
        RefinerConfig(output="delta")
