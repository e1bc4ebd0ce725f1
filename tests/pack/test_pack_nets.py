"""Stage-1 networks and losses: projection, PCA, decoder, autoencoder, discriminator, losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from repackctl.errors import ConfigError, WeightsError
from repackctl.pack.autoencoder import AutoencoderConfig, PackAutoencoder
from repackctl.pack.decoder import Decoder, DecoderConfig
from repackctl.pack.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_gan_weight,
    gan_factor,
    hinge_d_loss,
    hinge_g_loss,
)
from repackctl.pack.losses import (
    LPIPS_SETTING,
    LossConfig,
    PerceptualUnavailable,
    ReconstructionLoss,
    downscaled_pair,
    focal_frequency_loss,
    load_lpips,
    perceptual_available,
    write_random_lpips_weights,
)
from repackctl.pack.pca import PCAAccumulator, PCAProjection, fit_pca, token_whitening
from repackctl.pack.projection import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    PROJECTIONS,
    DiagonalGaussian,
    ProjectionConfig,
    RePackProjection,
    build_projection,
    projection_config,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny_decoder(latent_channels: int, grid: int, resolution: int) -> DecoderConfig:
    return DecoderConfig(
        latent_channels=latent_channels,
        latent_size=grid,
        resolution=resolution,
        ch=8,
        num_res_blocks=1,
        attn_resolutions=(grid,),
    )


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory: pytest.TempPathFactory):
    return write_random_lpips_weights(tmp_path_factory.mktemp("lpips") / "lpips.safetensors")


# ------------------------------------------------------------------------------ decoder


@pytest.mark.parametrize(
    ("grid", "resolution", "levels"),
    [(16, 256, 5), (8, 64, 4), (4, 32, 4), (8, 16, 2)],
)
def test_decoder_shapes_follow_grid_and_resolution(grid: int, resolution: int, levels: int) -> None:
    cfg = _tiny_decoder(4, grid, resolution)
    assert len(cfg.ch_mult) == levels
    out = Decoder(cfg)(torch.randn(1, 4, grid, grid))
    assert out.shape == (1, 3, resolution, resolution)
    assert torch.isfinite(out).all()


def test_decoder_rejects_bad_factor_and_ch_mult() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        DecoderConfig(latent_size=16, resolution=240)
    with pytest.raises(ConfigError, match="levels"):
        DecoderConfig(latent_size=8, resolution=64, ch_mult=(1, 1, 2, 2, 4))


def test_official_decoder_has_about_41m_parameters() -> None:
    cfg = DecoderConfig()  # ch 128, (1, 1, 2, 2, 4), 2 ResBlocks, attention at 16², 16 → 256
    assert cfg.ch_mult == (1, 1, 2, 2, 4)
    with torch.device("meta"):
        n = _count(Decoder(cfg))
    assert abs(n - 41e6) / 41e6 < 0.05, n


def test_decoder_config_round_trip() -> None:
    cfg = DecoderConfig(latent_channels=6, latent_size=8, resolution=64, ch=16, max_groups=8)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert DecoderConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown decoder config key"):
        DecoderConfig.from_dict({**data, "chmult": [1, 2]})


# ------------------------------------------------------------------------------ posterior


def test_kl_is_zero_for_standard_normal_and_positive_otherwise() -> None:
    zeros = torch.zeros(3, 4, 2, 2)
    assert torch.equal(DiagonalGaussian(zeros, zeros).kl_per_sample(), torch.zeros(3))
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    post = DiagonalGaussian(mean, logvar)
    assert (post.kl_per_sample() > 0).all()
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)),
        torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean)),
    )
    torch.testing.assert_close(post.kl_per_sample(), ref.flatten(1).sum(1))
    torch.testing.assert_close(post.kl(), ref.flatten(1).sum(1).mean())
    torch.testing.assert_close(post.kl_per_element(), ref.mean())


def test_posterior_sample_statistics_and_seeding() -> None:
    mean = torch.full((4, 8, 16, 16), 1.5)
    post = DiagonalGaussian(mean, torch.full_like(mean, math.log(0.25)))  # std 0.5
    a = post.sample(torch.Generator().manual_seed(3))
    assert abs(a.mean().item() - 1.5) < 0.02
    assert abs(a.std().item() - 0.5) < 0.02
    assert torch.equal(a, post.sample(torch.Generator().manual_seed(3)))
    assert not torch.equal(a, post.sample(torch.Generator().manual_seed(4)))
    assert torch.equal(post.mode(), mean)


def test_logvar_is_clamped() -> None:
    mean = torch.zeros(1, 2, 1, 1)
    post = DiagonalGaussian(mean, torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1))
    assert post.logvar.flatten().tolist() == [LOGVAR_MIN, LOGVAR_MAX]
    torch.testing.assert_close(post.std.flatten(), torch.exp(0.5 * torch.tensor([-30.0, 20.0])))


# ------------------------------------------------------------------------------ projections


def test_repack_projection_accepts_tokens_and_grids() -> None:
    torch.manual_seed(0)
    proj = RePackProjection(in_channels=12, latent_channels=5)
    tokens = torch.randn(2, 36, 12)  # (B, T, C) on a 6×6 grid
    post = proj.encode(tokens)
    assert post.mean.shape == post.std.shape == (2, 5, 6, 6)
    grid = tokens.transpose(1, 2).reshape(2, 12, 6, 6)  # (B, C, h, w)
    torch.testing.assert_close(proj.encode(grid).mean, post.mean)
    # One affine map per token: position (i, j) only depends on token i·w + j.
    expected = proj.proj(tokens[:, 7])[:, :5]  # token 7 → row 1, column 1
    torch.testing.assert_close(post.mean[:, :, 1, 1], expected)
    with pytest.raises(ConfigError, match="square"):
        proj.encode(torch.randn(2, 35, 12))
    with pytest.raises(ConfigError, match="channels"):
        proj.encode(torch.randn(2, 36, 10))


def test_projection_registry_builds_every_entry() -> None:
    assert set(PROJECTIONS) >= {"repack", "pca"}
    for kind in PROJECTIONS:
        module = build_projection(ProjectionConfig(kind, 12, 3))
        assert module.kind == kind and module.latent_channels == 3
    with pytest.raises(ConfigError, match="unknown projection"):
        ProjectionConfig("nope", 12, 3)


# ------------------------------------------------------------------------------ PCA


def _correlated_tokens(n: int = 600, c: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g)
    return torch.randn(n, c, generator=g) @ mix + 3.0  # (N, C), non-zero mean


def test_pca_matches_numpy_eigh() -> None:
    x = _correlated_tokens()
    res = fit_pca([x], components=4)
    xn = x.double().numpy()
    evals, evecs = np.linalg.eigh(np.cov(xn, rowvar=False))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    for k in range(4):
        ref = evecs[:, k] * np.sign(evecs[np.argmax(np.abs(evecs[:, k])), k])
        np.testing.assert_allclose(res.components[k].numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(res.explained_variance.numpy(), evals[:4], rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance_ratio.numpy(), evals[:4] / evals.sum())
    np.testing.assert_allclose(res.mean.numpy(), xn.mean(0))
    # Sign rule: each component's largest-magnitude entry is positive.
    idx = res.components.abs().argmax(1)
    assert (res.components.gather(1, idx[:, None]) > 0).all()


def test_pca_is_independent_of_batch_split_and_merges() -> None:
    x = _correlated_tokens().reshape(20, 30, 10)  # (B, T, C)
    one = fit_pca([x], 3)
    split = fit_pca(list(x.split(7)), 3)
    a, b = PCAAccumulator(10), PCAAccumulator(10)
    a.update(x[:5])
    b.update(x[5:])
    a.merge(b)
    merged = a.fit(3)
    for other in (split, merged):
        assert other.count == one.count == 600
        torch.testing.assert_close(other.components, one.components, rtol=0, atol=1e-12)
        torch.testing.assert_close(other.mean, one.mean, rtol=0, atol=1e-12)


def test_pca_projection_is_deterministic_and_round_trips() -> None:
    x = _correlated_tokens(n=2 * 16, c=10)
    res = fit_pca([x], 3)
    proj = PCAProjection.from_result(res)
    tokens = x.reshape(2, 16, 10).float()  # (B, T, C) on a 4×4 grid
    post = proj.encode(tokens)
    expected = ((tokens.double() - res.mean) @ res.components.T).float()  # (B, T, d)
    torch.testing.assert_close(post.mean.flatten(2).transpose(1, 2), expected)
    assert post.deterministic and torch.equal(post.std, torch.zeros_like(post.mean))
    assert torch.equal(post.sample(torch.Generator().manual_seed(0)), post.mode())
    assert post.kl().item() == 0.0

    unfitted = build_projection(ProjectionConfig("pca", 10, 3))
    with pytest.raises(ConfigError, match="not been fitted"):
        unfitted.encode(tokens)
    unfitted.load_state_dict(proj.state_dict())
    torch.testing.assert_close(unfitted.encode(tokens).mean, post.mean)


def test_token_whitening_decorrelates_and_equalises_the_directions() -> None:
    x = _correlated_tokens(n=4000, c=10)
    mean, matrix = token_whitening(fit_pca([x], 10), rel_eps=0.0)
    white = (x - mean) @ matrix  # (N, C)
    torch.testing.assert_close(
        torch.cov(white.T.double()), torch.eye(10, dtype=torch.float64), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(matrix, matrix.T)  # ZCA: symmetric, closest to the identity map
    # the floor keeps a direction without variance from being blown up
    flat = torch.cat([x[:, :9], torch.zeros(len(x), 1)], 1)  # (N, C), last channel constant
    _, m = token_whitening(fit_pca([flat], 10))
    assert torch.isfinite(m).all() and m.abs().max() < 1e3
    with pytest.raises(ConfigError, match="all 10 principal components"):
        token_whitening(fit_pca([x], 4))


def test_whitened_repack_projection_is_one_affine_map_and_round_trips() -> None:
    x = _correlated_tokens(n=2 * 16, c=10)
    mean, matrix = token_whitening(fit_pca([x], 10))
    torch.manual_seed(0)
    proj = build_projection(ProjectionConfig("repack", 10, 3, whiten=True))
    tokens = x.reshape(2, 16, 10).float()  # (B, T, C) on a 4×4 grid
    with pytest.raises(ConfigError, match="whitening has not been fitted"):
        proj.encode(tokens)
    proj.set_whitening(mean, matrix)
    post = proj.encode(tokens)
    # the same affine map written out: W (x − μ) M + b
    expected = proj.proj((tokens - mean) @ matrix)[..., :3]  # (B, T, d)
    torch.testing.assert_close(post.mean.flatten(2).transpose(1, 2), expected)
    assert projection_config(proj).whiten
    again = build_projection(projection_config(proj))
    again.load_state_dict(proj.state_dict())  # the whitening travels in the state dict
    torch.testing.assert_close(again.encode(tokens).mean, post.mean)
    with pytest.raises(ConfigError, match="cannot set a whitening"):
        proj.set_whitening(mean[:4], matrix[:4, :4])
    with pytest.raises(ConfigError, match="option of the repack projection"):
        ProjectionConfig("pca", 10, 3, whiten=True)
    # without the option the state dict keeps the official keys only
    assert set(build_projection(ProjectionConfig("repack", 10, 3)).state_dict()) == {
        "proj.weight",
        "proj.bias",
    }


# ------------------------------------------------------------------------------ autoencoder


@pytest.mark.parametrize(("grid", "resolution"), [(8, 64), (16, 256)])
def test_autoencoder_forward_and_config_round_trip(grid: int, resolution: int) -> None:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(ProjectionConfig("repack", 12, 4), _tiny_decoder(4, grid, resolution))
    model = PackAutoencoder.from_config(cfg).eval()
    tokens = torch.randn(1, grid * grid, 12)
    image, post = model(tokens, sample=False)
    assert image.shape == (1, 3, resolution, resolution)
    assert post.mean.shape == (1, 4, grid, grid)
    assert model.last_layer is model.decoder.conv_out.weight

    rebuilt = PackAutoencoder.from_dict(json.loads(json.dumps(model.config.to_dict())))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(tokens, sample=False)[0], image)
    s1, _ = model(tokens, sample=True, generator=torch.Generator().manual_seed(1))
    s2, _ = rebuilt(tokens, sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, image)  # sampling changes the latent


def test_autoencoder_with_pca_round_trips_its_fit() -> None:
    x = _correlated_tokens(n=64, c=10)
    model = PackAutoencoder(
        PCAProjection.from_result(fit_pca([x], 4)), Decoder(_tiny_decoder(4, 4, 16))
    )
    tokens = x[:32].reshape(2, 16, 10)
    image, post = model(tokens)
    assert post.deterministic and image.shape == (2, 3, 16, 16)
    rebuilt = PackAutoencoder.from_dict(model.config.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(tokens)[0], image)


def test_autoencoder_rejects_mismatched_latent_channels() -> None:
    with pytest.raises(ConfigError, match="latent_channels"):
        AutoencoderConfig(ProjectionConfig("repack", 12, 4), _tiny_decoder(5, 4, 16))


# ------------------------------------------------------------------------------ GAN pieces


def test_hinge_losses_on_known_logits() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 − real) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.0 / 3))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0 / 3)


def test_adaptive_weight_matches_hand_computation() -> None:
    w = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    nll, g = (w * a).sum(), 0.5 * (w * b).sum()  # gradients a and b/2
    weight = adaptive_gan_weight(nll, g, w)
    assert not weight.requires_grad
    assert weight.item() == pytest.approx((a.norm() / (0.5 * b.norm() + 1e-4)).item(), rel=1e-6)
    big = adaptive_gan_weight((w * 100 * a).sum(), (w * 0).sum(), w)  # g has no gradient
    assert big.item() == 1e4  # clamped
    assert gan_factor(4, start=5) == 0.0 and gan_factor(5, start=5) == 1.0


def test_groupnorm_discriminator_is_per_sample_batchnorm_is_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    group = PatchDiscriminator(DiscriminatorConfig(base_channels=8, n_layers=3))
    logits = group(x)
    assert logits.shape == (4, 1, 2, 2)
    torch.testing.assert_close(group(x[:1]), logits[:1])  # independent of the rest of the batch
    batch = PatchDiscriminator(DiscriminatorConfig(base_channels=8, n_layers=3, norm="batch"))
    assert not torch.allclose(batch(x[:2])[:1], batch(x)[:1])
    with torch.device("meta"):  # the refiner's discriminator (base 128) has ≈ 11 M parameters
        n = _count(PatchDiscriminator(DiscriminatorConfig(base_channels=128, norm="batch")))
    assert abs(n - 11.0e6) / 11.0e6 < 0.05, n


# ------------------------------------------------------------------------------ losses


def test_focal_frequency_loss() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    assert focal_frequency_loss(x, x).item() == 0.0
    assert focal_frequency_loss(x, y, patch_factor=2).item() > 0.0
    # α = 0 → unit spectrum weights; the orthonormal FFT preserves energy, so this is the MSE.
    torch.testing.assert_close(focal_frequency_loss(x, y, alpha=0.0), (x - y).pow(2).mean())
    # The focal weights are ≤ 1, so FFL never exceeds that MSE.
    assert focal_frequency_loss(x, y).item() < (x - y).pow(2).mean().item()
    with pytest.raises(ConfigError, match="patch_factor"):
        focal_frequency_loss(x, y, patch_factor=3)


def test_lpips_loads_from_safetensors_and_from_lpips_layout(tmp_path, lpips_file) -> None:
    model = load_lpips(lpips_file)
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model(x, x), torch.zeros(2))
    d = model(x, y)
    assert (d > 0).all()
    assert not any(p.requires_grad for p in model.parameters())

    # The same numbers in the lpips-package layout, split over two plain .pth state dicts.
    sd = model.state_dict()
    vgg = {
        f"net.slice1.{k.split('.')[1]}.{k.split('.')[2]}": v
        for k, v in sd.items()
        if k.startswith("features")
    }
    lins = {f"lin{i}.model.1.weight": sd[f"lins.{i}.weight"] for i in range(5)}
    torch.save(vgg, tmp_path / "vgg.pth")
    torch.save(lins, tmp_path / "lin.pth")
    torch.testing.assert_close(load_lpips([tmp_path / "vgg.pth", tmp_path / "lin.pth"])(x, y), d)

    with pytest.raises(WeightsError, match="lack"):
        load_lpips(tmp_path / "lin.pth")


def test_lpips_without_weights_is_a_clear_signal(tmp_path) -> None:
    assert not perceptual_available(None)
    assert not perceptual_available(tmp_path / "missing.safetensors")
    with pytest.raises(PerceptualUnavailable) as info:
        load_lpips(None)
    assert LPIPS_SETTING in info.value.hint
    with pytest.raises(PerceptualUnavailable):
        ReconstructionLoss(LossConfig(gan=0.0))  # perceptual > 0 but no network
    loss = ReconstructionLoss(LossConfig(gan=0.0).without_perceptual())
    out = loss.generator_loss(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    assert "perceptual" not in out.weighted and out.logs["loss/l1"].item() == 1.0


def test_pickled_code_is_refused(tmp_path) -> None:
    torch.save(
        {"lin0.model.1.weight": torch.zeros(1), "obj": ConfigError("x")}, tmp_path / "bad.pth"
    )
    with pytest.raises(WeightsError, match="safely"):
        load_lpips(tmp_path / "bad.pth")


def test_gan_weight_is_zero_before_start() -> None:
    disc = PatchDiscriminator(DiscriminatorConfig(base_channels=8, n_layers=2))
    loss = ReconstructionLoss(LossConfig(perceptual=0.0, gan_start=10), discriminator=disc)
    x, r = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16, requires_grad=True)
    assert "gan" not in loss.generator_loss(x, r, step=9).weighted
    assert loss.discriminator_loss(x, r, step=9).total.item() == 0.0
    assert loss.discriminator_loss(x, r, step=10).total.item() > 0.0


def test_every_term_gets_a_real_share_of_the_gradient(lpips_file) -> None:
    """At the default weights, on random data, each enabled image term carries > 1 % of the
    summed per-term gradient norms over the autoencoder's parameters (the official reduction
    made FFL ≈ 2·10⁵ times weaker than its weight). The KL keeps its tiny official strength."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(ProjectionConfig("repack", 16, 4), _tiny_decoder(4, 4, 32))
    model = PackAutoencoder.from_config(cfg)
    disc = PatchDiscriminator(DiscriminatorConfig(base_channels=8, n_layers=2))
    config = LossConfig()
    assert config.kl == pytest.approx(1e-6 * 16 * 16 * 32 / (3 * 256 * 256))
    loss = ReconstructionLoss(config, load_lpips(lpips_file), disc)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, post = model(torch.randn(2, 16, 16), generator=torch.Generator().manual_seed(0))
    out = loss.generator_loss(target, recon, post, step=0, last_layer=model.last_layer)
    assert set(out.weighted) == {"l1", "perceptual", "ffl", "kl", "gan"}
    torch.testing.assert_close(out.total, sum(out.weighted.values()))

    params = list(model.parameters())
    norms = {}
    for name, term in out.weighted.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)).item()
    total = sum(norms.values())
    shares = {k: v / total for k, v in norms.items()}
    for name in ("l1", "perceptual", "ffl", "gan"):
        assert shares[name] > 0.01, shares
    assert 0.0 < shares["kl"] < 0.01, shares  # wired in, but a regulariser by design


def test_scale_equivariance_term_compares_pooled_decodings() -> None:
    """Skorokhodov et al. 2025: decode(pool(z)) against pool(x), both ×2 average-pooled; the
    weight needs the pair, and a grid that cannot be halved is refused by name."""
    from repackctl.pack.task import _scale_equivariance

    torch.manual_seed(0)
    model = PackAutoencoder.from_config(
        AutoencoderConfig(ProjectionConfig("repack", 16, 4), _tiny_decoder(4, 4, 32))
    )
    z, target = torch.randn(2, 4, 4, 4), torch.rand(2, 3, 32, 32) * 2 - 1
    small, pooled = downscaled_pair(model.decode, z, target)
    assert small.shape == pooled.shape == (2, 3, 16, 16)
    torch.testing.assert_close(pooled[0, :, 0, 0], target[0, :, :2, :2].mean((1, 2)))
    loss = ReconstructionLoss(LossConfig(perceptual=0.0, gan=0.0, scale_equivariance=0.5))
    recon = model.decode(z)
    out = loss.generator_loss(target, recon, downscaled=(small, pooled))
    torch.testing.assert_close(
        out.weighted["scale_equivariance"], 0.5 * (small - pooled).abs().mean()
    )
    grads = torch.autograd.grad(
        out.weighted["scale_equivariance"], list(model.decoder.parameters())
    )
    assert sum(float(g.abs().sum()) for g in grads) > 0  # it trains the decoder
    with pytest.raises(ConfigError, match="downscaled"):
        loss.generator_loss(target, recon)
    assert _scale_equivariance(1.0, 8) == 1.0 and _scale_equivariance(0.0, 5) == 0.0
    with pytest.raises(ConfigError, match="scale_equivariance_weight"):
        _scale_equivariance(1.0, 5)


def test_attention_block_is_softmax_attention() -> None:
    from repackctl.pack.decoder import AttnBlock

    torch.manual_seed(0)
    block, x = AttnBlock(16, 32), torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # (B, C, hw) each
        attn = (q.transpose(1, 2) @ k / 4.0).softmax(-1)  # (B, hw, hw), scale 1/√16
        ref = x + block.proj_out((v @ attn.transpose(1, 2)).reshape(2, 16, 4, 4))
        torch.testing.assert_close(block(x), ref)
