"""MMDiT: shapes of every variant, padding invariance, null caption and CFG, REPA hidden state."""

from __future__ import annotations

import inspect

import pytest
import torch

from repackctl.errors import ConfigError
from repackctl.models.mmdit import (
    MMDIT_FACTORIES,
    MMDIT_SIZES,
    MMDiT,
    MMDiTConfig,
    build_mmdit_from_config,
    mmdit_config,
    mmdit_repa_depth,
    mmdit_tiny,
)
from repackctl.models.repa import REPAProjector, repa_loss

E_T = 32  # text width of the tiny model


def _randomise(model: MMDiT, seed: int = 0) -> MMDiT:
    """Give the zero-initialised adaLN and final layer random values so outputs are not 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _batch(b: int = 3, length: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)  # (B, C, h, w)
    t = torch.rand(b, generator=g)  # (B,)
    tokens = torch.randn(b, length, E_T, generator=g)  # (B, L, E_t)
    mask = torch.ones(b, length, dtype=torch.bool)  # (B, L)
    mask[0, 2:] = False  # a short caption
    mask[1, 4:] = False
    pooled = torch.randn(b, E_T, generator=g)  # (B, E_t)
    return x, t, tokens, mask, pooled


@pytest.mark.parametrize("name", sorted(MMDIT_FACTORIES))
def test_every_variant_shapes_on_meta(name):
    with torch.device("meta"):
        model = MMDIT_FACTORIES[name]()
        cfg = model.config
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
        tokens, mask = torch.randn(2, 77, cfg.text_dim), torch.ones(2, 77, dtype=torch.bool)
        k = mmdit_repa_depth(cfg.depth)
        v, hidden = model(x, torch.rand(2), tokens, mask, torch.randn(2, cfg.text_dim), k)
    assert cfg.name == name and v.shape == x.shape and v.device.type == "meta"
    assert hidden.shape == (2, cfg.num_tokens, cfg.hidden_size)
    assert len(model.joint_blocks) == cfg.depth
    if name not in ("mmdit-tiny", "mmdit-repa-2"):  # REPA's own: width 32 × depth
        size, patch = name.split("-")[1:]
        assert cfg.patch_size == int(patch) and cfg.depth == MMDIT_SIZES[size].depth
        assert cfg.hidden_size == 64 * cfg.depth and cfg.num_heads == cfg.depth
    # The last block's text stream only gives keys and values: no projection, no MLP.
    assert not hasattr(model.joint_blocks[-1].context_block, "mlp")
    assert hasattr(model.joint_blocks[0].context_block, "mlp")


def test_repa_depth_follows_repa():
    assert mmdit_repa_depth(24) == 8 and mmdit_repa_depth(2) == 1 and mmdit_repa_depth(18) == 6


def test_init_outputs_zero_and_zeroes_modulation():
    model = mmdit_tiny().eval()
    x, t, tokens, mask, pooled = _batch()
    assert torch.equal(model(x, t, tokens, mask, pooled), torch.zeros_like(x))
    for block in model.joint_blocks:
        for stream in (block.context_block, block.x_block):
            assert not stream.adaLN_modulation[-1].weight.any()
    assert model.context_embedder.weight.std() > 0  # xavier, not zero


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "rope": True}])
def test_padded_text_does_not_change_the_output(options):
    model = _randomise(mmdit_tiny(**options))
    x, t, tokens, mask, pooled = _batch()
    v, h = model(x, t, tokens, mask, pooled, return_hidden_at=1)
    # Garbage in padded positions (even NaN), and extra padding appended.
    garbage = torch.where(mask[..., None], tokens, torch.full_like(tokens, 1e3))
    garbage[2, -1] = 0.0  # row 2 is all real: keep it real
    garbage[0, 3] = float("nan")
    extra = torch.randn(3, 5, E_T) * 50
    tokens2 = torch.cat([garbage, extra], dim=1)  # (B, L + 5, E_t)
    mask2 = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)  # (B, L + 5)
    tokens2[2, :6] = tokens[2]
    v2, h2 = model(x, t, tokens2, mask2, pooled, return_hidden_at=1)
    assert torch.allclose(v, v2, atol=1e-5) and torch.allclose(h, h2, atol=1e-5)
    # A real token does change it (the test can fail).
    tokens3 = tokens.clone()
    tokens3[0, 0] += 1.0
    assert not torch.allclose(model(x, t, tokens3, mask, pooled)[0], v[0], atol=1e-4)


def test_cfg_is_the_combination_of_two_forwards_in_one_call(monkeypatch):
    model = _randomise(mmdit_tiny())
    x, t, tokens, mask, pooled = _batch()
    b = x.shape[0]
    cond = model(x, t, tokens, mask, pooled, drop_mask=torch.zeros(b, dtype=torch.bool))
    uncond = model(x, t, tokens, mask, pooled, drop_mask=torch.ones(b, dtype=torch.bool))
    # The null branch equals the model fed the null caption explicitly.
    n_tok, n_mask, n_pool = model.null_text(b, tokens.shape[1])
    assert torch.allclose(uncond, model(x, t, n_tok, n_mask, n_pool), atol=1e-6)
    assert not torch.allclose(cond, uncond, atol=1e-4)

    calls = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k)
    )
    guided = model.forward_with_cfg(x, t, tokens, mask, pooled, scale=4.0)
    assert calls == [2 * b]
    assert torch.allclose(guided, uncond + 4.0 * (cond - uncond), atol=1e-5)

    # Guidance interval: rows with t > t_hi get the conditional velocity.
    t_mixed = torch.tensor([0.2, 0.95, 0.5])
    cond_m = model(x, t_mixed, tokens, mask, pooled, drop_mask=torch.zeros(b, dtype=torch.bool))
    out = model.forward_with_cfg(x, t_mixed, tokens, mask, pooled, scale=4.0, t_hi=0.89)
    assert torch.allclose(out[1], cond_m[1], atol=1e-6)
    assert not torch.allclose(out[0], cond_m[0], atol=1e-4)
    calls.clear()
    assert torch.allclose(model.forward_with_cfg(x, t, tokens, mask, pooled, 1.0), cond, atol=1e-6)
    assert calls == [b]  # scale 1: only the conditional rows
    with pytest.raises(ConfigError, match="guidance interval"):
        model.forward_with_cfg(x, t, tokens, mask, pooled, 2.0, t_lo=0.9, t_hi=0.1)
    # As a sampler velocity function (y is ignored).
    assert torch.allclose(model.velocity_fn(tokens, mask, pooled, scale=4.0)(x, t, None), guided)


def test_fixed_null_caption_is_the_given_empty_caption():
    model = _randomise(mmdit_tiny(null_caption="fixed", null_length=6, pooled_condition=False))
    assert "null_tokens" in dict(model.named_buffers())  # saved, not trained
    x, t, tokens, mask, _ = _batch()
    empty = torch.randn(6, E_T)
    empty_mask = torch.tensor([True, True, False, False, False, False])
    model.set_null_caption(empty, empty_mask, torch.zeros(E_T))
    b = x.shape[0]
    uncond = model(x, t, tokens, mask, None, drop_mask=torch.ones(b, dtype=torch.bool))
    direct = model(x, t, empty.expand(b, 6, E_T), empty_mask.expand(b, 6), None)
    assert torch.allclose(uncond, direct, atol=1e-6)
    with pytest.raises(ConfigError, match="null_length"):
        model.set_null_caption(torch.zeros(5, E_T), torch.ones(5), torch.zeros(E_T))
    with pytest.raises(ConfigError, match="beyond the text length"):
        model(x, t, tokens[:, :1], mask[:, :1], None, drop_mask=torch.ones(b, dtype=torch.bool))


def test_training_drops_captions_with_a_seeded_mask():
    model = _randomise(mmdit_tiny(caption_dropout=0.5)).train()
    x, t, tokens, mask, pooled = _batch(b=8, seed=3)
    drop = model.caption_drop_mask(8, torch.Generator().manual_seed(0))
    assert drop.any() and not drop.all()
    out = model(x, t, tokens, mask, pooled, drop_mask=drop)
    model.eval()
    null = model(x, t, tokens, mask, pooled, drop_mask=torch.ones(8, dtype=torch.bool))
    cond = model(x, t, tokens, mask, pooled, drop_mask=torch.zeros(8, dtype=torch.bool))
    assert torch.allclose(out[drop], null[drop], atol=1e-6)
    assert torch.allclose(out[~drop], cond[~drop], atol=1e-6)


def test_repa_projector_and_loss_apply_to_the_hidden_state():
    model = _randomise(mmdit_tiny(grad_checkpointing=True)).train()
    x, t, tokens, mask, pooled = _batch()
    k = mmdit_repa_depth(model.config.depth)
    v, hidden = model(
        x, t, tokens, mask, pooled, return_hidden_at=k, drop_mask=torch.zeros(3).bool()
    )
    assert hidden.shape == (3, 64, 64)  # (B, T, D): 8×8 image tokens at patch 1
    projector = REPAProjector(64, 48, hidden_dim=32)
    loss = repa_loss(projector(hidden), torch.randn(3, 16, 48)) + v.square().mean()
    loss.backward()
    assert model.joint_blocks[0].x_block.qkv.weight.grad.abs().sum() > 0
    assert model.context_embedder.weight.grad.abs().sum() > 0  # text reaches the image tokens
    with pytest.raises(ConfigError, match="outside"):
        model(x, t, tokens, mask, pooled, return_hidden_at=3)


def test_config_round_trip_and_bad_inputs():
    model = mmdit_tiny(qk_norm=True)
    again = build_mmdit_from_config(model.config.to_dict())
    assert again.config == model.config
    assert again.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ConfigError, match="unknown MMDiT config keys"):
        MMDiTConfig.from_dict({**model.config.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown MMDiT options: num_classes"):
        mmdit_config(MMDIT_SIZES["s"], 2, name="x", num_classes=10)
    # Factories name their options, so the class-conditional path can tell it does not fit.
    for factory in MMDIT_FACTORIES.values():
        assert "num_classes" not in inspect.signature(factory).parameters
        assert "text_dim" in inspect.signature(factory).parameters
    with pytest.raises(ConfigError, match="not divisible"):
        MMDiTConfig(in_channels=4, input_size=8, patch_size=1, depth=1, hidden_size=60, num_heads=7)
    x, t, tokens, mask, pooled = _batch()
    with pytest.raises(ConfigError, match="text tokens"):
        model(x, t, tokens[..., :16], mask, pooled)
    with pytest.raises(ConfigError, match="pooled text"):
        model(x, t, tokens, mask, None)
