"""The Watson-DFT distance (Czolbe et al. 2020) of the official RePack stage 1: the distance
against a direct computation from the paper's formulas (loops over 8 × 8 blocks), its reduction
and reference order in the stage-1 loss, and the parameters file on the path users take
(`pack train --watson-weight … --watson-weights FILE` on a tiny real cache, through the CLI).

The official parameters (``rgb_watson_fft_trial0.pth``) cannot be downloaded here: the tests
write files with random values under the official key names and shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support.caches import patchpix_cache, patchpix_fixtures
from support.ckpt_state import run_state as _state
from support.cli import cli_ok, cli_refused
from support.evil import write_evil_pickle

from repackctl.errors import CheckpointError, ConfigError, WeightsError
from repackctl.pack.watson import load_watson

# the official state dict of the RGB Watson-DFT (ColorWrapper of three WatsonDistanceFft)
CHANNELS = ("ly", "lcb", "lcr")
TINY = [
    *("--encoder", "patchpix", "--resolution", "32", "-c", "4", "--ch", "8"),
    *("--batch-size", "8", "--log-every", "1", "--image-every", "0", "--gan-weight", "0"),
]


def official_params(seed: int, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Random parameters under the official key names and shapes (``shapes`` overrides some)."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=g)

    params = {
        "w_tild": rand((3,), -0.5, 0.5),
        "to_YCbCr.transform": rand((3, 3), -0.6, 0.6),
        "to_YCbCr.bias": rand((3,), 0.0, 0.5),
    }
    for c in CHANNELS:
        params[f"{c}.blocksize"] = torch.tensor(8)
        params[f"{c}.t_tild"] = rand((8, 5), -3.0, 1.0)
        params[f"{c}.alpha"] = rand((), -0.9, 0.9)
        params[f"{c}.w_tild"] = rand((), -3.0, 1.0)
        params[f"{c}.beta"] = rand((), 0.5, 1.5)
        params[f"{c}.w_phase_tild"] = rand((8, 5), -3.0, 0.5)
    for key, shape in shapes.items():
        params[key.replace("__", ".")] = rand(shape, -1.0, 1.0)
    return params


def write_params(path: Path, seed: int = 0, **shapes: tuple[int, ...]) -> Path:
    torch.save(official_params(seed, **shapes), path)
    return path


def direct_watson(reference: np.ndarray, distorted: np.ndarray, params: dict) -> float:
    """Watson-DFT distance of one (3, H, W) image in [−1, 1] to a reference, from the paper's
    formulas: an explicit 8 × 8 DFT per block, thresholds, masking and pooling one coefficient
    at a time (float64)."""
    p = {k: v.double().numpy() for k, v in params.items()}
    matrix, offset = p["to_YCbCr.transform"].T, p["to_YCbCr.bias"]  # official: RGB @ transform
    ref = np.einsum("ci,ihw->chw", matrix, (reference + 1) / 2) + offset[:, None, None]
    dis = np.einsum("ci,ihw->chw", matrix, (distorted + 1) / 2) + offset[:, None, None]
    weights = np.exp(p["w_tild"]) / np.exp(p["w_tild"]).sum()
    m = np.arange(8)
    total = 0.0
    for c, name in enumerate(CHANNELS):
        t = np.exp(p[f"{name}.t_tild"])
        alpha, beta = p[f"{name}.alpha"], p[f"{name}.beta"]
        w = 1 / (1 + np.exp(-p[f"{name}.w_tild"]))
        w_phase = np.exp(p[f"{name}.w_phase_tild"])
        for i, j in ((0, 0), (0, 4), (4, 0), (4, 4)):  # real coefficients: no phase
            w_phase[i, j] = 0.0

        def dft(img: np.ndarray, bi: int, bj: int) -> np.ndarray:
            block = img[8 * bi : 8 * bi + 8, 8 * bj : 8 * bj + 8]
            out = np.zeros((8, 5), dtype=complex)
            for u in range(8):
                for v in range(5):
                    wave = np.exp(-2j * np.pi * (u * m[:, None] + v * m[None, :]) / 8)
                    out[u, v] = (block * wave).sum() / 64
            return out

        grid = [(bi, bj) for bi in range(ref.shape[1] // 8) for bj in range(ref.shape[2] // 8)]
        spectra = [(dft(ref[c], *b), dft(dis[c], *b)) for b in grid]
        mean_dc = np.mean([abs(cr[0, 0]) for cr, _ in spectra])
        pooled, phase = 0.0, 0.0
        for cr, cd in spectra:
            for u in range(8):
                for v in range(5):
                    t_l = t[u, v] * (abs(cr[0, 0]) / mean_dc) ** alpha  # luminance masking
                    masked = abs(cr[u, v]) ** w * t_l ** (1 - w)  # contrast masking
                    e_a, e_b = math.exp(t_l), math.exp(masked)
                    s = (t_l * e_a + masked * e_b) / (e_a + e_b)  # soft maximum
                    pooled += abs((abs(cr[u, v]) - abs(cd[u, v])) / s) ** beta
                    diff = np.angle(cd[u, v]) - np.angle(cr[u, v])
                    phase += w_phase[u, v] * abs((diff + np.pi) % (2 * np.pi) - np.pi)
        total += weights[c] * (pooled ** (1 / beta) + phase)
    return float(total)


def _images(seed: int, shape: tuple[int, ...] = (3, 3, 16, 24)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


@pytest.fixture
def watson(tmp_path):
    return load_watson(write_params(tmp_path / "watson.pth", seed=1))


# --------------------------------------------------------------------------- the distance


def test_distance_is_zero_for_identical_images_and_positive_otherwise(watson):
    x = _images(0)
    y = x + 0.05 * _images(1)
    assert torch.equal(watson(x, x), torch.zeros(3, dtype=torch.float64))
    d = watson(x, y)  # (B,)
    assert d.shape == (3,) and (d > 0).all()
    assert (watson(x, x + 0.2 * _images(1)) > d).all()  # a larger distortion is farther
    # one distance per sample, whatever shares its batch (the luminance mean is per image)
    assert torch.allclose(watson(x[:1], y[:1]), d[:1], rtol=1e-12, atol=0)


def test_distance_equals_a_direct_computation_from_the_formulas(tmp_path):
    params = official_params(seed=7)
    torch.save(params, tmp_path / "p.pth")
    watson = load_watson(tmp_path / "p.pth")
    x, y = _images(2, (2, 3, 16, 24)), _images(3, (2, 3, 16, 24))  # 2 × 3 blocks, not square
    y = x + 0.3 * (y - x)
    got = watson(x, y)
    # the file holds float32 values: the direct computation uses the same numbers
    want = [direct_watson(x[b].numpy(), y[b].numpy(), params) for b in range(2)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-8, atol=0)
    # the masking comes from the first argument (the reference): swapping them differs
    swapped = direct_watson(y[0].numpy(), x[0].numpy(), params)
    assert abs(swapped - want[0]) > 1e-3 * want[0]


def test_gradients_reach_the_distorted_image_and_stay_finite(watson):
    x = _images(4, (2, 3, 16, 16)).float()
    flat = torch.zeros_like(x)  # every AC coefficient exactly 0
    for distorted in (x + 0.1, x.clone(), flat.clone()):
        y = distorted.requires_grad_(True)
        watson(x, y).sum().backward()
        assert y.grad is not None and torch.isfinite(y.grad).all()
    y = (x + 0.1).requires_grad_(True)
    watson(x, y).sum().backward()
    assert y.grad.abs().sum() > 0


def test_image_sides_must_be_multiples_of_eight(watson):
    with pytest.raises(ConfigError, match="multiples of 8"):
        watson(torch.zeros(1, 3, 12, 16), torch.zeros(1, 3, 12, 16))


def test_loss_term_is_the_official_per_element_distance_with_the_original_as_reference(watson):
    from repackctl.pack.losses import LossConfig, ReconstructionLoss

    target, recon = _images(5, (2, 3, 16, 16)).float(), _images(6, (2, 3, 16, 16)).float()
    config = LossConfig(l1=0, perceptual=0, ffl=0, kl=0, gan=0, watson=0.005)
    out = ReconstructionLoss(config, watson=watson).generator_loss(target, recon)
    per_element = watson(target, recon) / (3 * 16 * 16)  # the official Σ D / numel, per sample
    torch.testing.assert_close(out.weighted["watson"], 0.005 * per_element.mean())
    assert not torch.allclose(out.logs["loss/watson"], (watson(recon, target) / 768).mean())
    with pytest.raises(ConfigError, match="Watson-DFT"):
        ReconstructionLoss(config)  # weight > 0 but no distance


# --------------------------------------------------------------------------- the parameters file


@pytest.mark.parametrize(
    ("shapes", "drop", "message"),
    [
        ({}, "lcr.beta", "lacks lcr.beta"),  # an incomplete state dict
        ({"ly__t_tild": (8, 8)}, None, "ly.t_tild has shape (8, 8)"),  # the Watson-DCT file
        ({"t_tild": (8, 5)}, None, "has unknown t_tild"),  # greyscale keys mixed in
    ],
)
def test_a_wrong_parameters_file_is_refused_naming_the_setting(tmp_path, shapes, drop, message):
    params = official_params(0, **shapes)
    params.pop(drop, None)
    torch.save(params, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="pack.watson_weights") as e:
        load_watson(tmp_path / "wrong.pth")
    assert message in e.value.message and e.value.hint
    with pytest.raises(ConfigError, match="pack.watson_weights"):
        load_watson(tmp_path / "missing.pth")


def test_a_pickle_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = write_evil_pickle(tmp_path / "watson.pth", marker)
    with pytest.raises(WeightsError, match="pack.watson_weights") as e:
        load_watson(evil)
    assert e.value.hint and not marker.exists()


def test_safetensors_with_the_official_keys_load_the_same(tmp_path):
    from safetensors.torch import save_file

    params = official_params(seed=3)
    torch.save(params, tmp_path / "w.pth")
    save_file(params, str(tmp_path / "w.safetensors"))
    a, b = load_watson(tmp_path / "w.pth"), load_watson(tmp_path / "w.safetensors")
    assert a.digest() == b.digest()
    assert a.digest() != load_watson(write_params(tmp_path / "other.pth", seed=4)).digest()


def test_paper_plan_has_the_official_weight_and_warns_without_the_file(tmp_path):
    from repackctl.pack.data import locate_features
    from repackctl.pack.task import resolve_plan
    from repackctl.settings import resolve_settings

    patchpix_cache(tmp_path / "cache", 8)
    flags = {"pack.preset": "paper", "pack.encoder": "patchpix", "pack.resolution": 32}
    settings = resolve_settings(None, flags).settings
    assert settings.pack.watson_weight == 0.005
    plan = resolve_plan(settings, locate_features(settings))
    assert plan.loss.watson == 0.0 and plan.watson_weights is None
    assert any("Watson-DFT term (weight 0.005) is off" in n for n in plan.notes), plan.notes
    params = str(write_params(tmp_path / "w.pth"))
    given = resolve_settings(None, flags | {"pack.watson_weights": params}).settings
    plan = resolve_plan(given, locate_features(given))
    assert plan.loss.watson == 0.005 and plan.watson_weights == params
    assert not any("Watson" in n for n in plan.notes)


# --------------------------------------------------------------------------- pack train


# a patchpix cache of 16 built-in train images at 32 px, and a private copy per test
base_cache, cache = patchpix_fixtures("watson-cache", 16)


def test_pack_train_uses_the_parameters_file_and_a_resume_keeps_them(cache, tmp_path):
    params = write_params(tmp_path / "watson.pth", seed=5)
    run = ("pack", "train", *TINY, "--watson-weight", "0.01", "--name", "w")
    out = cli_ok(*run, "--watson-weights", str(params), "--steps", "2")
    assert "Watson-DFT term" not in out  # no warning: the term is on
    ckpt, state = _state(tmp_path, "w")
    plan = state["extra"]["plan"]
    assert plan["loss"]["watson"] == 0.01 and plan["watson_weights"] == str(params)
    assert plan["watson_digest"] == load_watson(params).digest()
    lines = (tmp_path / "runs" / "w" / "metrics.jsonl").read_text().splitlines()
    logged = [r["loss/watson"] for r in map(json.loads, lines) if "loss/watson" in r]
    assert len(logged) == 2 and all(v > 0 for v in logged)

    # other values in the same file: refused, nothing written
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    write_params(params, seed=6)
    args = (*run, "--watson-weights", str(params), "--steps", "4")
    refused = cli_refused(CheckpointError.exit_code, *args)
    assert "other Watson-DFT parameters" in refused and "--allow-change watson_weights" in refused
    assert _state(tmp_path, "w")[0] == ckpt
    assert before == {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    # another weight: refused by the settings layer, like every other loss weight
    other = ("pack", "train", *TINY, "--watson-weight", "0.02", "--name", "w", "--steps", "4")
    assert "watson_weight" in cli_refused(ConfigError.exit_code, *other)
    # allowed on purpose: continues, and records the new parameters
    cli_ok(*args, "--allow-change", "watson_weights")
    ckpt, state = _state(tmp_path, "w")
    assert state["step"] == 4
    assert state["extra"]["plan"]["watson_digest"] == load_watson(params).digest()
    # the same values under another path (the file moved): resumes without --allow-change
    moved = params.rename(tmp_path / "moved.pth")
    cli_ok(*run, "--watson-weights", str(moved), "--steps", "5")
    assert _state(tmp_path, "w")[1]["step"] == 5


def test_pack_train_refuses_a_wrong_file_before_writing_anything(cache, tmp_path):
    wrong = tmp_path / "dct.pth"
    torch.save(official_params(0, ly__t_tild=(8, 8)), wrong)
    args = ("pack", "train", *TINY, "--watson-weight", "0.01", "--steps", "1", "--name", "bad")
    out = cli_refused(WeightsError.exit_code, *args, "--watson-weights", str(wrong))
    assert "pack.watson_weights" in out and "ly.t_tild" in out
    out = cli_refused(ConfigError.exit_code, *args, "--watson-weights", str(tmp_path / "no.pth"))
    assert "pack.watson_weights" in out
    assert not (tmp_path / "runs" / "bad").exists()


def test_without_the_file_a_given_weight_is_refused_and_the_presets_warns(cache, tmp_path):
    # a weight the user gives without the file is refused (it trained without the term)
    given = ("pack", "train", *TINY, "--watson-weight", "0.01", "--steps", "1", "--name", "o")
    out = cli_refused(ConfigError.exit_code, *given)
    assert "pack.watson_weights is not set" in " ".join(out.split()), out
    assert not (tmp_path / "runs" / "o").exists()
    # the paper preset's own weight (0.005) without the file: the term is off, with a warning
    out = cli_ok("pack", "train", *TINY, "--preset", "paper", "--steps", "1", "--name", "o")
    assert "Watson-DFT term (weight 0.005) is off" in out
    plan = _state(tmp_path, "o")[1]["extra"]["plan"]
    assert plan["loss"]["watson"] == 0.0 and plan["watson_weights"] is None
