"""`pack train --preset paper` equals the official RePack stage 1 (guanfangdong/RePack-then-Refine
``stage1/``): BatchNorm PatchGAN, GAN off for the first update only (``disc_start`` 1), 99 epochs,
no EMA, no TF32, Watson-DFT weight 0.005, focal-frequency weight 0.05, the official adaptive GAN
weight (gradient of L1 + LPIPS only, capped at the official 1e4 on a per-image sum); a run started under the older preset values is refused
on resume, never silently changed. Real components: a patchpix cache at 32 px, the CLI, real
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.caches import patchpix_fixtures
from support.ckpt_state import run_state as _state
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError, ResumeConflict
from repackctl.settings import resolve_settings
from repackctl.settings.pack import PackSettings

# a tiny decoder under the paper preset: 4×4 grid → 32 px, d = 4, 8 channels, attention at 16
TINY = [
    *("--preset", "paper", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--disc-channels", "8", "--batch-size", "8"),
    *("--log-every", "1", "--image-every", "0", "--ckpt-every", "2"),
]
IMAGES = 16


# a patchpix cache of IMAGES built-in train images at 32 px, and a private copy per test
base_cache, cache = patchpix_fixtures("paper-cache", IMAGES)


def test_paper_preset_resolves_to_the_official_values():
    r = resolve_settings(None, {"pack.preset": "paper", "pack.encoder": "dinov3"}, environ={})
    pack = r.settings.pack
    official = {"disc_norm": "batch", "gan_start": 1, "epochs": 99, "ema_decay": 0.0}
    official |= {"batch_size": 32, "lr": 1e-5, "disc_channels": 64}
    official |= {"watson_weight": 0.005}  # WatsonLoss loss_weight (on only with its file)
    official |= {"ffl_weight": 0.05}  # FocalFrequencyLoss loss_weight (the same reduction)
    official |= {"adaptive_gan": "official"}  # calculate_adaptive_weight on nll_loss
    for key, value in official.items():
        assert getattr(pack, key) == value, key
        assert r.sources[f"pack.{key}"] == "preset paper", key
    assert pack.steps is None  # the length is the epochs: no step count of our own
    small = resolve_settings(None, {"pack.preset": "small"}, environ={}).settings.pack
    assert (small.disc_norm, small.steps, small.epochs, small.gan_start) == (
        "group",
        600,
        None,
        400,
    )
    assert small.watson_weight == 0.0
    assert (small.ffl_weight, small.adaptive_gan) == (1.0, "all_terms")  # as it was tuned
    # the command shows the same values and where they came from
    shown = cli_ok("pack", "train", "--preset", "paper", "--encoder", "dinov3", "--show-config")
    assert "pack.disc_norm = 'batch' # preset paper" in shown
    assert "pack.epochs = 99 # preset paper" in shown
    assert "pack.gan_start = 1 # preset paper" in shown
    assert "pack.watson_weight = 0.005 # preset paper" in shown
    assert "pack.ffl_weight = 0.05 # preset paper" in shown
    assert "pack.adaptive_gan = 'official' # preset paper" in shown


def test_epochs_and_steps_pick_the_training_length():
    # epochs given with the small preset: the preset's 600 steps must not win over them
    r = resolve_settings(None, {"pack.preset": "small", "pack.epochs": 3}, environ={})
    assert (r.settings.pack.steps, r.settings.pack.epochs) == (None, 3)
    assert "pack.steps" not in r.sources
    # an explicit steps wins over the paper preset's epochs
    r = resolve_settings(None, {"pack.preset": "paper", "pack.steps": 7}, environ={})
    assert (r.settings.pack.steps, r.sources["pack.steps"]) == (7, "flag")


def test_paper_plan_counts_99_epochs_of_the_training_images(cache):
    from repackctl.pack.data import locate_features
    from repackctl.pack.task import resolve_plan

    flags = {"pack.preset": "paper", "pack.encoder": "patchpix", "pack.resolution": 32}
    settings = resolve_settings(None, flags).settings
    plan = resolve_plan(settings, locate_features(settings))
    assert (plan.epochs, plan.images, plan.batch_size) == (99, IMAGES, 32)
    assert plan.steps == 50  # ceil(99 × 16 / 32)
    assert plan.tf32 is False and plan.to_dict()["tf32"] is False
    assert plan.discriminator.norm == "batch" and plan.loss.gan_start == 1
    assert any("99 epochs × 16 images / batch 32 = 50 steps" in n for n in plan.notes)
    steps_given = resolve_settings(None, flags | {"pack.steps": 3}).settings
    plan = resolve_plan(steps_given, locate_features(steps_given))
    assert (plan.steps, plan.epochs) == (3, None)


def test_tiny_paper_run_trains_a_batchnorm_disc_for_the_epochs_given(cache, tmp_path):
    from repackctl.pack.discriminator import DiscriminatorConfig, PatchDiscriminator

    out = cli_ok("pack", "train", *TINY, "--epochs", "1", "--name", "p1")
    assert "1 epochs × 16 images / batch 8 = 2 steps" in out
    ckpt, state = _state(tmp_path, "p1")
    assert ckpt.name == "step-0000002" and state["step"] == 2
    plan = state["extra"]["plan"]
    assert (plan["steps"], plan["epochs"], plan["images"]) == (2, 1, IMAGES)
    assert plan["discriminator"]["norm"] == "batch" and plan["loss"]["gan_start"] == 1
    assert state["config"]["tf32"] is False and state["config"]["ema_decay"] == 0.0
    disc = load_file(str(ckpt / "disc.safetensors"))
    assert any(k.endswith("running_mean") for k in disc)  # BatchNorm buffers
    rebuilt = PatchDiscriminator(DiscriminatorConfig.from_dict(plan["discriminator"]))
    assert rebuilt.main[3].__class__.__name__ == "BatchNorm2d"
    rebuilt.load_state_dict(disc)  # the stored weights are those of that network
    # official disc_start 1: no generator GAN term on update 0, from update 1 on
    lines = (tmp_path / "runs" / "p1" / "metrics.jsonl").read_text().splitlines()
    records = {r["step"]: r for r in map(json.loads, lines) if "step" in r}
    gan_keys = [k for k in records[2] if "gan" in k and k.startswith("loss/")]
    assert gan_keys, records[2]
    assert not [k for k in records[1] if k in gan_keys], records[1]


def test_epochs_given_on_resume_set_the_length_of_a_run_started_with_steps(cache, tmp_path):
    """The stored --steps won over --epochs given later (pack takes a given step count first):
    the run stopped at once with "nothing to train" and an exit of 0."""
    cli_ok("pack", "train", *TINY, "--steps", "2", "--name", "len")
    out = cli_ok("pack", "train", *TINY, "--epochs", "2", "--name", "len")
    assert "pack.steps: 2 → 'from epochs'" in out
    assert "2 epochs × 16 images / batch 8 = 4 steps" in out
    assert _state(tmp_path, "len")[1]["step"] == 4
    # a later resume without a length keeps the epochs it was given
    out = cli_ok("pack", "train", *TINY, "--name", "len")
    assert "nothing to train" in out and _state(tmp_path, "len")[1]["step"] == 4


def _as_recorded_by_the_old_version(run_dir: Path) -> None:
    """The run's stored settings record as the version before this preset wrote it: there,
    ``pack.disc_norm`` was a plain default (``group``), not a preset value."""
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["extra"]["settings"]["sources"]["pack.disc_norm"] = "default"
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))


def test_a_run_under_the_old_paper_preset_resumes_with_the_values_it_started_with(
    cache, tmp_path, monkeypatch
):
    """Its discriminator norm (a plain default then) and the preset values it recorded stay as
    it started; a flag for the new norm is refused, allowed or not, before anything is written
    (by the settings layer: audit s37 B finding 3; it was by its checkpoint)."""
    old = {"disc_norm": "group", "gan_start": 0, "epochs": None, "steps": 2}
    with monkeypatch.context() as m:
        for key, value in old.items():
            m.setitem(PackSettings.PRESETS["paper"], key, value)
        cli_ok("pack", "train", *TINY, "--name", "old")
    _as_recorded_by_the_old_version(tmp_path / "runs" / "old")
    ckpt, _ = _state(tmp_path, "old")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    args = ("pack", "train", *TINY, "--name", "old", "--steps", "4")
    out = cli_refused(
        ResumeConflict.exit_code, *args, "--disc-norm", "batch", "--allow-change", "disc_norm"
    )
    assert "pack.disc_norm: 'group' → 'batch'" in out, out
    assert "pack.disc_norm cannot change on resume" in out, out
    # nothing written, nothing lost
    assert _state(tmp_path, "old")[0] == ckpt
    assert before == {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    # without a flag it continues as it started (it was refused for the new preset's norm)
    out = " ".join(cli_ok(*args).split())
    assert "pack.disc_norm: kept 'group' as the run started (preset paper now gives 'batch'" in out
    ckpt, state = _state(tmp_path, "old")
    assert ckpt.name == "step-0000004"
    assert state["extra"]["plan"]["loss"]["gan_start"] == 0  # as started, not the new 1
    assert state["extra"]["plan"]["discriminator"]["norm"] == "group"


def test_a_changed_gan_start_is_refused_on_resume():
    from repackctl.pack.losses import LossConfig
    from repackctl.pack.task import _check_resume_loss

    # a run whose plan recorded gan_start 0 (the old paper preset), resumed with 1
    old, now = (
        {"loss": LossConfig(gan_start=0).to_dict()},
        {"loss": LossConfig(gan_start=1).to_dict()},
    )
    with pytest.raises(CheckpointError, match="gan_start = 0, now 1") as e:
        _check_resume_loss("r", old, now, [])
    assert "--gan-start" in e.value.hint


def test_a_run_recorded_before_tf32_was_planned_is_refused_with_tf32_off():
    from repackctl.pack.task import _check_resume_tf32

    old_plan = {"steps": 2, "preset": "paper"}  # before `tf32` was recorded: TF32 was on
    now = {"steps": 4, "preset": "paper", "tf32": False}
    with pytest.raises(CheckpointError, match="TF32 matmuls on") as e:
        _check_resume_tf32("r", old_plan, now, [])
    assert "--allow-change tf32" in e.value.hint
    _check_resume_tf32("r", old_plan, now, ["tf32"])  # allowed
    _check_resume_tf32("r", old_plan | {"tf32": False}, now, [])  # same precision


# ------------------------------------------------------------------ the adaptive GAN weight


def _official_adaptive_weight(x, recon, lpips_per_sample, logits_fake, last_layer):
    """taming ``LPIPSWithDiscriminator.calculate_adaptive_weight`` as the official stage 1 calls
    it (``perceptual.py``): nll_loss = Σ(|x − x̂| + LPIPS broadcast over the pixels) / B (logvar
    0, never trained), g = −mean(D(x̂)); → (raw ratio, clamped to [0, 1e4])."""
    rec = (x - recon).abs() + lpips_per_sample.view(-1, 1, 1, 1)  # (B, 3, H, W)
    nll = rec.sum() / rec.shape[0]
    g_loss = -logits_fake.mean()
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    raw = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return raw.item(), raw.clamp(0.0, 1e4).item()


@pytest.fixture(scope="module")
def paper_terms(tmp_path_factory):
    """A tiny decoder, a BatchNorm PatchGAN and every term of the paper preset: L1, LPIPS
    (random weights saved to a file), FFL, Watson-DFT, GAN, with the preset's weights."""
    from repackctl.pack.decoder import Decoder, DecoderConfig
    from repackctl.pack.discriminator import DiscriminatorConfig, PatchDiscriminator
    from repackctl.pack.losses import LossConfig, load_lpips, write_random_lpips_weights
    from repackctl.pack.watson import WatsonDFT

    pack = resolve_settings(None, {"pack.preset": "paper"}, environ={}).settings.pack
    config = LossConfig(
        l1=pack.l1_weight,
        perceptual=pack.perceptual_weight,
        ffl=pack.ffl_weight,
        watson=pack.watson_weight,
        gan=pack.gan_weight,
        gan_start=pack.gan_start,
        adaptive_gan=pack.adaptive_gan,
    )
    assert config.ffl > 0 and config.watson > 0  # terms the official numerator leaves out
    torch.manual_seed(0)
    lpips = load_lpips(
        write_random_lpips_weights(tmp_path_factory.mktemp("lpips") / "l.safetensors")
    )
    dec = Decoder(DecoderConfig(latent_channels=4, latent_size=4, resolution=32, ch=8))
    disc = PatchDiscriminator(DiscriminatorConfig(base_channels=8, norm="batch"))
    z, x = torch.randn(2, 4, 4, 4), torch.rand(2, 3, 32, 32) * 2 - 1
    return config, lpips, dec, disc, WatsonDFT(), z, x


@pytest.mark.parametrize("disc_scale", [1e3, 1e-6], ids=["under-cap", "capped"])
def test_paper_adaptive_gan_weight_is_the_official_one_per_image_element(paper_terms, disc_scale):
    from repackctl.pack.losses import ReconstructionLoss

    config, lpips, dec, disc, watson, z, x = paper_terms
    with torch.no_grad():  # a steep or a flat discriminator: the ratio below or above the cap
        last = disc.main[-1]
        saved = last.weight.clone()
        last.weight.mul_(disc_scale)
    try:
        loss = ReconstructionLoss(config, perceptual=lpips, discriminator=disc, watson=watson)
        recon = dec(z)
        out = loss.generator_loss(x, recon, step=config.gan_start, last_layer=dec.last_layer)
        raw, official = _official_adaptive_weight(
            x, recon, lpips(recon, x), disc(recon), dec.last_layer
        )
    finally:
        with torch.no_grad():
            last.weight.copy_(saved)
    assert (raw < 1e4) if disc_scale > 1 else (raw > 1e4), raw  # both sides of the cap
    pixels = 3 * 32 * 32  # the official sums over them; every term of ours is a mean
    ours = out.logs["loss/gan_adaptive_weight"].item()
    assert ours == pytest.approx(official / pixels, rel=1e-5)
    gan = out.weighted["gan"].item()
    assert gan == pytest.approx(0.5 * official / pixels * out.logs["loss/gan"].item(), rel=1e-5)


def test_paper_plan_carries_the_official_adaptive_gan_weight(cache):
    from repackctl.pack.data import locate_features
    from repackctl.pack.task import resolve_plan

    for preset, form, ffl in (("paper", "official", 0.05), ("small", "all_terms", 1.0)):
        flags = {"pack.preset": preset, "pack.encoder": "patchpix", "pack.resolution": 32}
        settings = resolve_settings(None, flags).settings
        plan = resolve_plan(settings, locate_features(settings))
        assert (plan.loss.ffl, plan.loss.adaptive_gan) == (ffl, form), preset
