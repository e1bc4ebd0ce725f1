"""`refine train --preset paper` builds the official stage 3 PatchGAN as it is initialised
(guanfangdong/RePack-then-Refine ``stage3/networks.py`` ``PatchDiscriminator``: no init of its
own, so PyTorch's default init, and a bias on every conv, also before a BatchNorm), where ours
had taming's DCGAN init (conv N(0, 0.02), norm scale N(1, 0.02), no bias before a norm). The
init is a named setting, ``refine.disc_init`` (paper ``pytorch``, small ``dcgan``: the demo
trains as before); pack keeps DCGAN (the official stage 1 applies taming's ``weights_init``); a
run started before the setting resumes with the DCGAN net it trained. Real components: the
shared patchpix stack (32 px, 16 images), the CLI, real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.ckpt_state import run_state
from support.cli import cli_ok
from support.stack import shared_stack
from torch import nn

from repackctl.pack.discriminator import DiscriminatorConfig, PatchDiscriminator
from repackctl.settings import resolve_settings
from repackctl.settings.refine import RefineSettings

CONVS = (0, 2, 5, 8, 11)  # the PatchGAN's convolutions in ``main`` (3 layers)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _args(stack: dict[str, str], name: str, steps: int = 2) -> tuple[str, ...]:
    """`refine train --preset paper` with a tiny network, ``steps`` steps."""
    return (
        *("refine", "train", "--preset", "paper", "--pack-run", "pack-tiny", "--name", name),
        *(
            "--base-channels",
            "8",
            "--disc-channels",
            "8",
            "--batch-size",
            "4",
            "--steps",
            str(steps),
        ),
        *("--ckpt-every", "2", "--cache", stack["cache"], "--runs", stack["runs"]),
        *("--device", "cpu"),
    )


def _official_layout(c: int) -> nn.Sequential:
    """The official 3-layer PatchGAN of base width ``c`` as its paper describes it, built
    layer by layer from PyTorch's modules with their defaults: 4×4 convs 3 → c → 2c → 4c (stride
    2) → 8c (stride 1) → 1, BatchNorm after the middle three, LeakyReLU 0.2."""
    return nn.Sequential(
        nn.Conv2d(3, c, 4, 2, 1),
        nn.LeakyReLU(0.2),
        *(nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2)),
        *(nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2)),
        *(nn.Conv2d(4 * c, 8 * c, 4, 1, 1), nn.BatchNorm2d(8 * c), nn.LeakyReLU(0.2)),
        nn.Conv2d(8 * c, 1, 4, 1, 1),
    )


def test_paper_preset_picks_the_official_init_and_small_keeps_dcgan():
    r = resolve_settings(None, {"refine.preset": "paper"}, environ={})
    assert (r.settings.refine.disc_init, r.sources["refine.disc_init"]) == (
        "pytorch",
        "preset paper",
    )
    small = resolve_settings(None, {"refine.preset": "small"}, environ={}).settings.refine
    assert small.disc_init == "dcgan"
    shown = cli_ok("refine", "train", "--preset", "paper", "--show-config")
    assert "refine.disc_init = 'pytorch' # preset paper" in shown
    assert DiscriminatorConfig().init == "dcgan"  # pack's PatchGAN (and old records)


def test_the_pytorch_init_is_the_official_net_as_pytorch_builds_it():
    config = DiscriminatorConfig(base_channels=8, norm="batch", init="pytorch")
    torch.manual_seed(3)
    ours = PatchDiscriminator(config).main.state_dict()
    torch.manual_seed(3)
    official = _official_layout(8).state_dict()
    assert ours.keys() == official.keys()  # a bias on every conv, in the same places
    assert all(torch.equal(ours[k], official[k]) for k in ours)
    # the DCGAN net: no bias before a norm, conv weights N(0, 0.02)
    torch.manual_seed(3)
    dcgan = PatchDiscriminator(DiscriminatorConfig(base_channels=8, norm="batch")).main
    assert dcgan[2].bias is None and abs(float(dcgan[2].weight.detach().std()) - 0.02) < 0.002
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert PatchDiscriminator(config)(x).shape == (2, 1, 2, 2)


def test_a_paper_refiner_trains_the_official_discriminator(stack):
    cli_ok(*_args(stack, "rinit"))
    ckpt, state = run_state(Path(stack["runs"]).parent, "rinit")
    assert state["extra"]["disc_config"]["init"] == "pytorch"
    disc = load_file(str(ckpt / "disc.safetensors"))
    assert all(f"main.{i}.bias" in disc for i in CONVS), sorted(disc)
    rebuilt = PatchDiscriminator(DiscriminatorConfig.from_dict(state["extra"]["disc_config"]))
    rebuilt.load_state_dict(disc)  # the stored weights are those of that network


def test_a_refiner_started_before_disc_init_resumes_with_dcgan(stack, monkeypatch):
    """Its record has no ``refine.disc_init`` and its checkpoint's discriminator config no
    ``init``: it trained the DCGAN net, and goes on with it (and says so), although the paper
    preset now builds the PyTorch-initialised one (whose conv biases its weights lack)."""
    with monkeypatch.context() as m:
        m.setitem(RefineSettings.PRESETS["paper"], "disc_init", "dcgan")
        cli_ok(*_args(stack, "rold-init"))
    run = Path(stack["runs"]) / "rold-init"
    config = json.loads((run / "config.json").read_text())
    record = config["extra"]["settings"]
    del record["values"]["refine"]["disc_init"], record["sources"]["refine.disc_init"]
    config.pop("config_sha256")  # as the version before the setting wrote it
    (run / "config.json").write_text(json.dumps(config))
    out = cli_ok(*_args(stack, "rold-init", steps=4))
    assert "refine.disc_init: kept 'dcgan' as the run started (preset paper now gives " in out
    ckpt, state = run_state(run.parent.parent, "rold-init")
    assert ckpt.name == "step-0000004" and state["extra"]["disc_config"]["init"] == "dcgan"
    assert "main.2.bias" not in load_file(str(ckpt / "disc.safetensors"))
