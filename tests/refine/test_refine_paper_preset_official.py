"""`refine train --preset paper` equals the official refiner (guanfangdong/RePack-then-Refine
``stage3/``): a BatchNorm PatchGAN, no EMA, 100 epochs over the triplets; a run started under the
older preset values keeps them on resume or is refused, never silently changed. Real components:
the shared patchpix stack (32 px, 16 images), the CLI, real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack, tiny_refine_task

from repackctl.errors import CheckpointError
from repackctl.settings import resolve_settings
from repackctl.settings.refine import RefineSettings

TRIPLETS = 16  # the stack's training images, each with a triplet


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _args(stack: dict[str, str], name: str) -> tuple[str, ...]:
    """`refine train --preset paper` with a tiny network (the official layout, narrower)."""
    return (
        *("refine", "train", "--preset", "paper", "--pack-run", "pack-tiny", "--name", name),
        *("--base-channels", "8", "--disc-channels", "8", "--batch-size", "4"),
        *("--ckpt-every", "2", "--cache", stack["cache"], "--runs", stack["runs"]),
        *("--device", "cpu"),
    )


def _state(stack: dict[str, str], name: str) -> tuple[Path, dict]:
    from repackctl.train.checkpoint import latest_checkpoint, read_state

    ckpt = latest_checkpoint(Path(stack["runs"]) / name)
    return ckpt, read_state(ckpt)


def _config(stack: dict[str, str], name: str) -> dict:
    """The stage settings the run recorded (config.json → extra)."""
    return json.loads((Path(stack["runs"]) / name / "config.json").read_text())["extra"]


def test_paper_preset_resolves_to_the_official_values():
    r = resolve_settings(None, {"refine.preset": "paper"}, environ={})
    cfg = r.settings.refine
    official = {"disc_norm": "batch", "ema_decay": 0.0, "epochs": 100, "batch_size": 64}
    official |= {"lr": 1e-4, "base_channels": 128, "disc_channels": 128, "gan_weight": 0.5}
    for key, value in official.items():
        assert getattr(cfg, key) == value, key
        assert r.sources[f"refine.{key}"] == "preset paper", key
    assert cfg.steps is None
    small = resolve_settings(None, {"refine.preset": "small"}, environ={}).settings.refine
    assert (small.disc_norm, small.ema_decay, small.steps, small.epochs) == (
        "group",
        0.99,
        300,
        None,
    )
    # no EMA warm-up for the refiner: the EMA that refine apply loads must be mostly trained
    # weights after the preset's steps (0.999 left 74 % of the initial ones)
    assert small.ema_decay**small.steps < 0.1
    shown = cli_ok("refine", "train", "--preset", "paper", "--show-config")
    assert "refine.disc_norm = 'batch' # preset paper" in shown
    assert "refine.ema_decay = 0.0 # preset paper" in shown
    assert "refine.epochs = 100 # preset paper" in shown
    # epochs given with the small preset: its 300 steps do not win over them
    r = resolve_settings(None, {"refine.preset": "small", "refine.epochs": 2}, environ={})
    assert (r.settings.refine.steps, r.settings.refine.epochs) == (None, 2)


def test_tiny_paper_run_has_a_batchnorm_disc_no_ema_and_epochs_steps(stack):
    out = cli_ok(*_args(stack, "rp1"), "--epochs", "1")
    assert "1 epochs × 16 triplets / batch 4 = 4 steps" in out
    ckpt, state = _state(stack, "rp1")
    assert state["step"] == 4 and ckpt.name == "step-0000004"
    assert _config(stack, "rp1")["length"] == {"steps": 4, "epochs": 1, "triplets": TRIPLETS}
    assert state["extra"]["disc_config"]["norm"] == "batch"
    assert state["config"]["ema_decay"] == 0.0 and state["config"]["tf32"] is True
    disc = load_file(str(ckpt / "disc.safetensors"))
    assert any(k.endswith("running_mean") for k in disc)  # BatchNorm buffers
    # no EMA: the EMA copy is the trained weights
    model, ema = (
        load_file(str(ckpt / "model.safetensors")),
        load_file(str(ckpt / "ema.safetensors")),
    )
    assert model.keys() == ema.keys() and all((model[k] == ema[k]).all() for k in model)
    # an explicit --steps wins over the epochs
    cli_ok(*_args(stack, "rp2"), "--steps", "2")
    assert _config(stack, "rp2")["length"] == {
        "steps": 2,
        "epochs": None,
        "triplets": TRIPLETS,
    }


def _as_recorded_by_the_old_version(run_dir: Path) -> None:
    """The run's stored settings record as the version before this preset wrote it: it had no
    ``refine.disc_norm``, and ``refine.ema_decay`` was a plain default (0.999)."""
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    record = config["extra"]["settings"]
    del record["values"]["refine"]["disc_norm"]
    del record["sources"]["refine.disc_norm"]
    record["sources"]["refine.ema_decay"] = "default"
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))


def test_a_run_under_the_old_paper_preset_keeps_its_ema_and_is_refused_another_disc(
    stack, monkeypatch
):
    # the paper preset before: GroupNorm discriminator, EMA 0.999, a step count
    old = {"disc_norm": "group", "ema_decay": 0.999, "epochs": None, "steps": 2}
    with monkeypatch.context() as m:
        for key, value in old.items():
            m.setitem(RefineSettings.PRESETS["paper"], key, value)
        cli_ok(*_args(stack, "rold"))
    _as_recorded_by_the_old_version(Path(stack["runs"]) / "rold")
    ckpt, _ = _state(stack, "rold")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    args = (*_args(stack, "rold"), "--steps", "4")
    out = cli_refused(CheckpointError.exit_code, *args)
    assert "discriminator norm = 'group', now 'batch'" in out and "--disc-norm group" in out
    assert _state(stack, "rold")[0] == ckpt  # nothing written, nothing lost
    assert before == {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    # the EMA the default gave it stays as the run started (the paper preset now has none)
    out = " ".join(cli_ok(*args, "--disc-norm", "group").split())
    assert "refine.ema_decay: kept 0.999 as the run started (preset paper now gives 0.0" in out
    ckpt, state = _state(stack, "rold")
    assert ckpt.name == "step-0000004" and state["config"]["ema_decay"] == 0.999


def test_the_paper_refiner_never_mirrors_its_triplets(stack):
    """The official triplets are never mirrored (stage3 prepare_offline_data.py ``p_hflip=0.0``,
    and its dataset has no flip): under the paper preset every batch is the stored image, its
    reconstruction and latent of flip slot 0, whatever the step's generator draws."""
    import numpy as np

    from repackctl.data.cached import images_to_float

    r = resolve_settings(None, {"refine.preset": "paper"}, environ={})
    assert r.settings.refine.flip is False and r.sources["refine.flip"] == "preset paper"
    small = resolve_settings(None, {"refine.preset": "small"}, environ={}).settings.refine
    assert small.flip is True  # the other presets keep the random mirror

    task, entry = tiny_refine_task(stack, build=True, flip=r.settings.refine.flip)
    rows = np.arange(TRIPLETS)
    stored = images_to_float(entry.images[task.positions[rows]])
    latent = torch.from_numpy(task.triplets["latent"][task.positions[rows], 0]).float()
    for seed in range(8):
        batch = task.get_batch(rows, seed, np.random.default_rng(seed))
        assert torch.equal(batch["gt"], stored), seed
        assert torch.equal(batch["z"], latent), seed
    # with flips on, the same draws mirror some triplets (what the paper preset must not do)
    flipping, _ = tiny_refine_task(stack, build=True, flip=True)
    batch = flipping.get_batch(rows, 0, np.random.default_rng(0))
    assert not torch.equal(batch["gt"], stored)

    cli_ok(*_args(stack, "rnoflip"), "--steps", "2")
    _, state = _state(stack, "rnoflip")
    assert state["extra"]["flip"] is False and _config(stack, "rnoflip")["refine"]["flip"] is False


def test_a_paper_run_started_before_refine_flip_resumes_with_flips(stack):
    """A run whose record has no ``refine.flip`` trained with random flips: it goes on with them
    (and says so), although the paper preset now turns them off; a flag that turns them off is
    refused unless ``--allow-change flip`` lets it."""
    from repackctl.errors import ResumeConflict

    cli_ok(*_args(stack, "rflipold"), "--steps", "2")
    run = Path(stack["runs"]) / "rflipold"
    path = run / "config.json"
    config = json.loads(path.read_text())
    record = config["extra"]["settings"]
    del record["values"]["refine"]["flip"]
    del record["sources"]["refine.flip"]
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))

    out = cli_refused(
        ResumeConflict.exit_code, *_args(stack, "rflipold"), "--steps", "3", "--no-flip"
    )
    assert "refine.flip" in out and "--allow-change flip" in out
    assert _state(stack, "rflipold")[1]["step"] == 2
    out = cli_ok(*_args(stack, "rflipold"), "--steps", "3")
    assert "refine.flip: kept True" in " ".join(out.split())
    _, state = _state(stack, "rflipold")
    assert state["step"] == 3 and state["extra"]["flip"] is True
    # the kept value is now the run's own; a flag allowed to change it changes it
    cli_ok(*_args(stack, "rflipold"), "--steps", "4", "--no-flip", "--allow-change", "flip")
    _, state = _state(stack, "rflipold")
    assert state["step"] == 4 and state["extra"]["flip"] is False


def test_a_default_that_changed_since_the_run_started_stays_as_it_started(stack):
    """A resumed run keeps a value the default gave it when this version's default is another
    (as `train dit` does; a preset's values are kept by the settings layer): it took the new
    default silently, e.g. another loss weight from the next step on. Simulated as a run
    started when the default L1 weight was 2."""
    cli_ok(*_args(stack, "rl1old"), "--steps", "2")
    path = Path(stack["runs"]) / "rl1old" / "config.json"
    config = json.loads(path.read_text())
    assert config["extra"]["settings"]["sources"]["refine.l1_weight"] == "default"
    config["extra"]["settings"]["values"]["refine"]["l1_weight"] = 2.0
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))
    out = " ".join(cli_ok(*_args(stack, "rl1old"), "--steps", "3").split())
    assert "refine.l1_weight: kept 2.0 as the run started (default now gives 1.0" in out
    assert _config(stack, "rl1old")["settings"]["values"]["refine"]["l1_weight"] == 2.0
    assert _state(stack, "rl1old")[1]["step"] == 3
    # kept: now the run's own value, which a flag allowed to change changes
    cli_ok(
        *_args(stack, "rl1old"), "--steps", "4", "--l1-weight", "1", "--allow-change", "l1_weight"
    )
    assert _config(stack, "rl1old")["settings"]["values"]["refine"]["l1_weight"] == 1.0


def test_the_refiner_uses_the_official_groupnorm_eps():
    """The official RefineUNet's ``nn.GroupNorm(32, c)`` keep PyTorch's eps 1e-5: an imported
    official refiner (``import official --refiner``) has it in every norm, attention included.
    A refiner recorded before ``norm_eps`` existed was built with 1e-6 and keeps it."""
    from support.official import official_refiner

    from repackctl.convert.official import map_stage3
    from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig

    weights, config, _ = map_stage3(official_refiner(), image_size=32)
    model = LatentGuidedRefiner(config)
    model.load_state_dict(weights)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    official = torch.nn.GroupNorm(32, 64).eps  # the official network's norms
    assert len(norms) > 10 and {m.eps for m in norms} == {official} == {1e-5}
    old = {k: v for k, v in config.to_dict().items() if k != "norm_eps"}
    assert RefinerConfig.from_dict(old).norm_eps == 1e-6
    assert RefinerConfig.from_dict(config.to_dict()) == config
