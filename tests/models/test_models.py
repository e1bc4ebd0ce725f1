"""DiT variants, building blocks and the REPA projector/loss (CPU, tiny sizes)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from repackctl.errors import ConfigError
from repackctl.models.dit import DiT, DiTConfig
from repackctl.models.layers import Rope2d, sincos_pos_embed_2d, swiglu_hidden
from repackctl.models.repa import REPAProjector, default_repa_depth, repa_loss, resample_tokens
from repackctl.models.variants import MODEL_FACTORIES, build_from_config, model_id

C, SIDE, NCLS = 4, 8, 10


def _meta_model(ident: str, **kw) -> DiT:
    """Build a registered variant at full size without allocating its weights."""
    with torch.device("meta"):
        return MODEL_FACTORIES[ident](in_channels=C, input_size=SIDE, num_classes=NCLS, **kw)


def _shrunk(ident: str, **kw) -> DiT:
    """The variant's architecture (family, norm, MLP, RoPE, patch) at a tiny depth and width."""
    cfg = _meta_model(ident, **kw).config
    if ident != "tiny":
        cfg = dataclasses.replace(cfg, depth=2, hidden_size=64, num_heads=2)
    return DiT(cfg)


def _randomise(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialised parts random values so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, SIDE, SIDE, generator=g)  # (B, C, h, w)
    t = torch.rand(batch, generator=g)  # (B,)
    y = torch.randint(0, NCLS, (batch,), generator=g)  # (B,)
    return x, t, y


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_has_all_families_sizes_and_patches():
    ids = set(MODEL_FACTORIES)
    for size in ("s", "b", "l", "xl"):
        assert {f"lightningdit-{size}-1", f"lightningdit-{size}-2"} <= ids
        for patch in (2, 4, 8):
            assert {f"dit-{size}-{patch}", f"sit-{size}-{patch}"} <= ids
    assert "tiny" in ids
    assert len(ids) == 4 * 2 + 2 * 4 * 3 + 1
    assert model_id("LightningDiT", "XL", 1) == "lightningdit-xl-1"
    assert MODEL_FACTORIES["sit-b-4"].__name__ == "sit_b_4"
    with pytest.raises(ConfigError) as exc:
        model_id("lightningdit", "xl", 4)
    assert "lightningdit-xl-1" in exc.value.hint


@pytest.mark.parametrize("ident", sorted(MODEL_FACTORIES))
def test_variant_forward_backward(ident: str):
    meta = _meta_model(ident)
    cfg = meta.config
    family = ident.split("-")[0] if ident != "tiny" else "lightningdit"
    assert cfg.family == family
    assert cfg.name == ident
    if ident != "tiny":
        size = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == size[ident.split("-")[1]]
        assert cfg.patch_size == int(ident.split("-")[2])
    if family == "lightningdit":
        assert (cfg.norm, cfg.mlp, cfg.rope) == ("rmsnorm", "swiglu", True)
    else:
        assert (cfg.norm, cfg.mlp, cfg.rope) == ("layernorm", "gelu", False)

    model = _randomise(_shrunk(ident)).train()
    x, t, y = _inputs()
    v, hidden = model(x, t, y, return_hidden_at=1, drop_mask=torch.zeros(3, dtype=torch.bool))
    assert v.shape == x.shape
    assert hidden.shape == (3, model.config.num_tokens, model.config.hidden_size)
    loss = F.mse_loss(v, torch.randn_like(v)) + hidden.pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("y_embedder"):
            continue  # only the rows of the drawn labels get a gradient
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_lightningdit_xl1_has_675m_params():
    model = _meta_model("lightningdit-xl-1")
    assert model.config.num_tokens == SIDE**2
    with torch.device("meta"):
        paper = MODEL_FACTORIES["lightningdit-xl-1"](
            in_channels=32, input_size=16, num_classes=1000
        )
    assert 674e6 < paper.num_params < 676e6
    assert swiglu_hidden(1152) == 3072
    assert paper.blocks[0].mlp.w12.out_features == 2 * 3072


def test_factory_options_reach_the_network():
    model = _shrunk("lightningdit-b-2", qk_norm=True, no_shift=True, class_dropout=0.2)
    block = model.blocks[0]
    assert block.adaLN_modulation[-1].out_features == 4 * 64  # scale, gate × 2: no shift
    assert not isinstance(block.attn.q_norm, torch.nn.Identity)
    assert model.config.class_dropout == 0.2
    x, t, y = _inputs()
    assert _randomise(model)(x, t, y).abs().sum() > 0


def test_depth_width_heads_override_the_size():
    model = MODEL_FACTORIES["tiny"](
        in_channels=C, input_size=SIDE, num_classes=NCLS, depth=8, width=48, heads=3
    )
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == (8, 48, 3) and len(model.blocks) == 8
    assert cfg.name == "tiny-d8w48h3"
    assert build_from_config(json.loads(json.dumps(cfg.to_dict()))).config == cfg
    s2 = _meta_model("sit-s-2", depth=9)  # only the depth changes; width and heads stay S's
    assert (s2.config.depth, s2.config.hidden_size, s2.config.num_heads) == (9, 384, 6)
    assert MODEL_FACTORIES["tiny"](in_channels=C, input_size=SIDE).config.name == "tiny"
    with pytest.raises(ConfigError):
        MODEL_FACTORIES["tiny"](in_channels=C, input_size=SIDE, width=50, heads=3)
    with pytest.raises(ConfigError):
        MODEL_FACTORIES["tiny"](in_channels=C, input_size=SIDE, depth=0)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ident", ["tiny", "sit-s-2"])
def test_adaln_zero_blocks_are_identity_and_output_is_zero(ident: str):
    model = _shrunk(ident).eval()
    x, t, y = _inputs()
    h = torch.randn(3, model.config.num_tokens, model.config.hidden_size)  # (B, T, D)
    c = torch.randn(3, model.config.hidden_size)  # (B, D)
    for block in model.blocks:
        assert torch.equal(block(h, c, model.feat_rope), h)
    v = model(x, t, y)
    assert torch.equal(v, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------


def test_rope_shape_norm_and_relative_positions():
    grid, head_dim = 5, 16
    rope = Rope2d(head_dim, grid, grid)
    assert rope.freqs_cos.shape == (grid * grid, head_dim)
    g = torch.Generator().manual_seed(0)
    q0 = torch.randn(head_dim, generator=g)
    k0 = torch.randn(head_dim, generator=g)
    # The same content at every position: (1, 1, T, Dh).
    q = rope(q0.expand(1, 1, grid * grid, head_dim))
    k = rope(k0.expand(1, 1, grid * grid, head_dim))
    assert q.shape == (1, 1, grid * grid, head_dim)
    torch.testing.assert_close(q.norm(dim=-1), q0.norm().expand(1, 1, grid * grid))
    dots = (q[0, 0] @ k[0, 0].T).reshape(grid, grid, grid, grid)  # (r_q, c_q, r_k, c_k)
    # Same offset (Δr, Δc) = (1, -2) from different absolute positions: same score.
    torch.testing.assert_close(dots[0, 2, 1, 0], dots[3, 4, 4, 2])
    torch.testing.assert_close(dots[2, 2, 2, 2], dots[4, 0, 4, 0])
    # A different offset gives a different score (the rotation does encode position).
    assert not torch.allclose(dots[0, 2, 1, 0], dots[0, 2, 0, 0])
    # Rows move the first half of the channels, columns the second half.
    row_step = rope.freqs_cos[grid] != rope.freqs_cos[0]  # (Dh,) one row down
    col_step = rope.freqs_cos[1] != rope.freqs_cos[0]  # (Dh,) one column right
    assert row_step[: head_dim // 2].all() and not row_step[head_dim // 2 :].any()
    assert col_step[head_dim // 2 :].all() and not col_step[: head_dim // 2].any()


def test_sincos_table_first_half_encodes_columns():
    pos = sincos_pos_embed_2d(16, 3, 4)  # (T, D)
    grid = pos.reshape(3, 4, 16)
    # Same column → same first half; same row → same second half (DiT/MAE layout).
    torch.testing.assert_close(grid[0, 1, :8], grid[2, 1, :8])
    torch.testing.assert_close(grid[1, 0, 8:], grid[1, 3, 8:])
    assert not torch.allclose(grid[0, 0, :8], grid[0, 1, :8])
    assert grid[0, 1, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())


# ---------------------------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------------------------


def test_label_dropout_uses_the_null_class():
    model = _randomise(MODEL_FACTORIES["tiny"](num_classes=NCLS, class_dropout=0.5))
    assert model.null_class == NCLS
    assert model.y_embedder.embedding_table.num_embeddings == NCLS + 1
    x, t, y = _inputs(batch=8)
    null = torch.full_like(y, NCLS)
    model.eval()
    v_cond, v_null = model(x, t, y), model(x, t, null)
    # An explicit mask drops exactly those labels, in any mode.
    mask = torch.tensor([True, False] * 4)
    v_masked = model(x, t, y, drop_mask=mask)
    torch.testing.assert_close(v_masked[mask], v_null[mask])
    torch.testing.assert_close(v_masked[~mask], v_cond[~mask])
    # Training mode draws a mask: every row is either the conditional or the null output.
    model.train()
    torch.manual_seed(3)
    v_train = model(x, t, y)
    dropped = (v_train - v_null).flatten(1).abs().amax(1) < 1e-6  # (B,)
    kept = (v_train - v_cond).flatten(1).abs().amax(1) < 1e-6  # (B,)
    assert (dropped ^ kept).all()
    assert dropped.any() and kept.any()
    # The seedable mask is reproducible.
    m1 = model.label_drop_mask(64, torch.Generator().manual_seed(1))
    m2 = model.label_drop_mask(64, torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2) and 10 < int(m1.sum()) < 54


def test_return_hidden_and_input_checks():
    model = _randomise(MODEL_FACTORIES["tiny"]()).eval()
    x, t, y = _inputs()
    v = model(x, t, y)
    v1, h1 = model(x, t, y, return_hidden_at=1)
    v2, h2 = model(x, t, y, return_hidden_at=2)
    torch.testing.assert_close(v1, v)
    torch.testing.assert_close(v2, v)
    assert h1.shape == h2.shape == (3, SIDE * SIDE, 64)
    assert not torch.allclose(h1, h2)
    # A scalar time broadcasts over the batch.
    torch.testing.assert_close(model(x, torch.tensor(0.3), y), model(x, torch.full((3,), 0.3), y))
    with pytest.raises(ConfigError):
        model(x, t, y, return_hidden_at=3)
    with pytest.raises(ConfigError) as exc:
        model(torch.randn(3, C + 1, SIDE, SIDE), t, y)
    assert "in_channels" in exc.value.hint
    with pytest.raises(ConfigError):
        model(x, t[:2], y)


def test_grad_checkpointing_gives_the_same_gradients():
    x, t, y = _inputs()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # same xavier draws for both models
        model = _randomise(MODEL_FACTORIES["tiny"](grad_checkpointing=ckpt)).train()
        v = model(x, t, y, drop_mask=torch.zeros(3, dtype=torch.bool))
        v.pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    model.set_grad_checkpointing(False)
    assert model.config.grad_checkpointing is False


# ---------------------------------------------------------------------------------------------
# Config round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ident", ["tiny", "dit-s-4"])
def test_config_round_trip_rebuilds_identical_model(ident: str):
    model = _randomise(_shrunk(ident, qk_norm=True)).eval()
    text = json.dumps(model.config.to_dict())
    rebuilt = build_from_config(json.loads(text))
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x, t, y = _inputs()
    assert torch.equal(rebuilt.eval()(x, t, y), model(x, t, y))
    with pytest.raises(ConfigError):
        DiTConfig.from_dict({**model.config.to_dict(), "widht": 3})
    with pytest.raises(ConfigError):
        DiTConfig.from_dict({"family": "sit"})


def test_invalid_configs_raise_config_error():
    base = MODEL_FACTORIES["tiny"]().config
    for bad in (
        {"patch_size": 3},
        {"num_heads": 3},
        {"family": "unet"},
        {"class_dropout": 1.5},
        {"hidden_size": 72, "num_heads": 4},  # head dim 18: not divisible by 4 for RoPE
    ):
        with pytest.raises(ConfigError):
            dataclasses.replace(base, **bad)


# ---------------------------------------------------------------------------------------------
# REPA
# ---------------------------------------------------------------------------------------------


def test_default_repa_depth():
    assert default_repa_depth(28) == 8
    assert default_repa_depth(24) == 7
    assert default_repa_depth(12) == 3
    assert default_repa_depth(2) == 1
    assert default_repa_depth(1) == 1


def test_repa_loss_equals_hand_computed_cosine():
    projected = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    target = torch.tensor([[[2.0, 0.0], [-1.0, 0.0]]])  # (1, 2, 2)
    # cos = 1 and −1/√2 → loss = −(1 − 1/√2)/2
    expected = -(1.0 - 2**-0.5) / 2
    assert repa_loss(projected, target).item() == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 9, 5, generator=g), torch.randn(2, 9, 5, generator=g)
    by_hand = -((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()
    assert repa_loss(a, b).item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert repa_loss(a, a).item() == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ConfigError):
        repa_loss(a, b[..., :4])


def test_repa_target_resampled_on_the_grid():
    # 4×4 target grid to a 2×2 DiT grid: bilinear 2× reduction averages each 2×2 cell.
    target = torch.arange(16.0).reshape(1, 4, 4, 1).expand(1, 4, 4, 3).reshape(1, 16, 3)
    down = resample_tokens(target, 4)  # (1, 4, 3)
    torch.testing.assert_close(down[0, :, 0], torch.tensor([2.5, 4.5, 10.5, 12.5]))
    projected = torch.randn(2, 4, 3)
    t16 = torch.randn(2, 16, 3)
    assert repa_loss(projected, t16).item() == pytest.approx(
        repa_loss(projected, resample_tokens(t16, 4)).item()
    )
    with pytest.raises(ConfigError):
        repa_loss(torch.randn(2, 5, 3), t16)


def test_projector_maps_dit_width_to_encoder_width():
    proj = REPAProjector(64, 12, hidden_dim=32)
    h = torch.randn(2, 16, 64)  # (B, T, D)
    assert proj(h).shape == (2, 16, 12)
    assert [m.out_features for m in proj.mlp if isinstance(m, torch.nn.Linear)] == [32, 32, 12]
    assert REPAProjector(1152, 768).mlp[0].out_features == 2048
