"""`pack train --preset paper` trains the discriminator on the first update, as the official
stage 1 does (guanfangdong/RePack-then-Refine ``stage1/repack/models/autoencoder.py``: two
optimizers stepped by hand, so Lightning's ``global_step`` advances twice per batch; the
discriminator's loss of the first batch is computed at ``global_step`` 1 ≥ ``disc_start`` 1,
while the autoencoder's GAN term of that batch, at ``global_step`` 0, is off). The lead is a
named setting, ``pack.disc_lead`` (paper 1, small 0: the demo trains as before), and a run
started before it resumes with the 0 it trained with. Real components: a patchpix cache at
32 px, the CLI, real checkpoints."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from support.caches import patchpix_fixtures
from support.ckpt_state import run_state as _state
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError, ResumeConflict
from repackctl.pack.discriminator import DiscriminatorConfig, PatchDiscriminator
from repackctl.pack.losses import LossConfig, ReconstructionLoss
from repackctl.settings import resolve_settings
from repackctl.settings.pack import PackSettings

# a tiny decoder under the paper preset: 4×4 grid → 32 px, d = 4, 8 channels
TINY = [
    *("--preset", "paper", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--disc-channels", "8", "--batch-size", "8"),
    *("--log-every", "1", "--image-every", "0", "--ckpt-every", "2"),
]

base_cache, cache = patchpix_fixtures("disc-lead-cache", 16)


def test_paper_preset_leads_with_the_discriminator_by_one_update():
    r = resolve_settings(None, {"pack.preset": "paper", "pack.encoder": "dinov3"}, environ={})
    assert (r.settings.pack.disc_lead, r.sources["pack.disc_lead"]) == (1, "preset paper")
    assert r.settings.pack.gan_start == 1  # the generator's GAN term: from the second update
    small = resolve_settings(None, {"pack.preset": "small"}, environ={}).settings.pack
    assert (small.disc_lead, small.gan_start) == (0, 400)  # as the demo was tuned
    shown = cli_ok("pack", "train", "--preset", "paper", "--encoder", "dinov3", "--show-config")
    assert "pack.disc_lead = 1 # preset paper" in shown


def test_the_discriminator_loss_starts_disc_lead_updates_before_the_gan_term():
    torch.manual_seed(0)
    disc = PatchDiscriminator(DiscriminatorConfig(base_channels=8))
    x, r = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    paper = ReconstructionLoss(LossConfig(perceptual=0.0, gan_start=1, disc_lead=1), None, disc)
    assert paper.config.disc_start == 0
    assert not paper.gan_active(0) and paper.gan_active(1)
    assert paper.discriminator_loss(x, r, step=0).total.item() > 0.0
    together = ReconstructionLoss(LossConfig(perceptual=0.0, gan_start=1), None, disc)
    assert together.discriminator_loss(x, r, step=0).total.item() == 0.0
    assert together.discriminator_loss(x, r, step=1).total.item() > 0.0
    # never before update 0; a record without the field trained them together
    assert LossConfig(gan_start=0, disc_lead=3).disc_start == 0
    assert LossConfig.from_dict({"gan_start": 5}).disc_start == 5


def test_a_paper_run_trains_its_discriminator_on_update_0_only_the_discriminator(cache, tmp_path):
    """One update under paper against the same update with ``--disc-lead 0``: the autoencoder
    steps the same (its GAN term is off on update 0 in both), the discriminator only under paper
    (before, it stayed at its init)."""
    cli_ok("pack", "train", *TINY, "--steps", "1", "--name", "lead")
    cli_ok("pack", "train", *TINY, "--steps", "1", "--disc-lead", "0", "--name", "nolead")
    (lead, state), (nolead, _) = _state(tmp_path, "lead"), _state(tmp_path, "nolead")
    assert state["extra"]["plan"]["loss"]["disc_lead"] == 1
    trained, untrained = (load_file(str(c / "disc.safetensors")) for c in (lead, nolead))
    assert trained.keys() == untrained.keys()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)
    model = [load_file(str(c / "model.safetensors")) for c in (lead, nolead)]
    assert all(torch.equal(model[0][k], model[1][k]) for k in model[0])
    lines = (tmp_path / "runs" / "lead" / "metrics.jsonl").read_text().splitlines()
    first = next(r for r in map(json.loads, lines) if r.get("step") == 1)
    assert first["loss/disc"] > 0.0 and "loss/gan" not in first, first


def test_disc_lead_without_the_gan_is_refused(cache, tmp_path):
    args = ("pack", "train", *TINY, "--gan-weight", "0", "--disc-lead", "1", "--steps", "2")
    out = cli_refused(ConfigError.exit_code, *args)
    assert "pack.disc_lead = " in out and "pack.gan_weight is 0.0 (from flag)" in out, out
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


def test_a_paper_run_started_before_disc_lead_resumes_with_0(cache, tmp_path, monkeypatch):
    """Its record has no ``pack.disc_lead`` (its plan's loss none: read as 0): it goes on with
    0 and says so; the paper preset's 1 given as a flag is refused, nothing written."""
    with monkeypatch.context() as m:
        m.setitem(PackSettings.PRESETS["paper"], "disc_lead", 0)
        cli_ok("pack", "train", *TINY, "--steps", "2", "--name", "old")
    path = tmp_path / "runs" / "old" / "config.json"
    config = json.loads(path.read_text())
    record = config["extra"]["settings"]
    del record["values"]["pack"]["disc_lead"], record["sources"]["pack.disc_lead"]
    config.pop("config_sha256")  # as the version before the setting wrote it
    path.write_text(json.dumps(config))
    ckpt, _ = _state(tmp_path, "old")
    args = ("pack", "train", *TINY, "--steps", "4", "--name", "old")
    out = cli_refused(ResumeConflict.exit_code, *args, "--disc-lead", "1")
    assert "pack.disc_lead: 0 → 1 (the run started before disc_lead was a setting" in out
    assert _state(tmp_path, "old")[0] == ckpt  # nothing written
    shown = cli_ok(*args, "--show-config")  # what the resume trains with, not the preset's 1
    assert "pack.disc_lead = 0 " in shown, shown
    out = cli_ok(*args)
    assert "pack.disc_lead: kept 0 as the run started (preset paper now gives 1" in out
    ckpt, state = _state(tmp_path, "old")
    assert ckpt.name == "step-0000004"
    assert state["extra"]["plan"]["loss"]["disc_lead"] == 0
