"""`train dit --preset paper` / `--preset repa` equal the official recipes value for value.

Official sources (guanfangdong/RePack-then-Refine stage 2, sihyun-yu/REPA): stage2/train.py sets
no TF32 flag and runs eager fp32 PyTorch; stage2/extract_features.py caches ONE posterior sample
per image and per flip, reused every epoch; the stage-2 config's sampling section is the run's
sampling.json; REPA's dataset reads each image as stored (no flip). The cache comes from the real
pipeline at toy size, as in test_dit_train.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.caches import shared_packed_cache
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.settings import resolve_settings
from repackctl.train import latest_checkpoint, load_weights, read_state

runner = CliRunner()
N = 32  # images: 4 steps of 8 per epoch
TINY = ["--size", "tiny", "-b", "8", "--log-every", "1", "--image-every", "0", "--device", "cpu"]

# the official RePack-DiT-XL/1 recipe as our settings (reference/methods.md)
PAPER = {
    "arch": "lightningdit",
    "size": "xl",
    "patch": 1,
    "steps": 320_000,
    "global_batch": 256,
    "lr": 2e-4,
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.0,
    "schedule": "step",
    "drop_step": 240_000,
    "drop_lr": 1e-4,
    "ema_decay": 0.9999,
    "ema_warmup": False,
    "time_dist": "logit_normal",
    "time_mu": 0.0,
    "time_sigma": 1.0,
    "time_shift": 1.0,
    "cos_weight": 1.0,
    "cos_norm_floor": 0.0,  # LightningDiT transport.py: plain cosine_similarity
    "class_dropout": 0.1,
    "repa_weight": 0.0,
    "clip_grad": None,
    "flip": True,
    "latent_sampling": "fixed",
    "kernels": "eager",
    "tf32": False,
}
# REPA's SiT-XL/2 recipe (sihyun-yu/REPA train.py; TF32 on: its README passes --allow-tf32)
REPA = {
    "arch": "sit",
    "size": "xl",
    "patch": 2,
    "steps": 400_000,
    "global_batch": 256,
    "lr": 1e-4,
    "beta1": 0.9,
    "beta2": 0.999,
    "schedule": "constant",
    "time_dist": "uniform",
    "cos_weight": 0.0,
    "clip_grad": 1.0,
    "repa_weight": 0.5,
    "repa_depth": 8,
    "repa_hidden": 2048,
    "latent_sampling": "sample",
    "flip": False,
    "kernels": "auto",
    "tf32": True,
}


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    return shared_packed_cache(tmp_path_factory, tmp_path_factory.mktemp("paper") / "cache", N)


@pytest.fixture
def cache(base_cache, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(base_cache, root)
    shutil.copytree(base_cache.parent / "runs", tmp_path / "runs")  # the pack run, for `sample`
    monkeypatch.setenv("REPACKCTL_CACHE", str(root))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


# --------------------------------------------------------------------------- the presets


@pytest.mark.parametrize(("preset", "expected"), [("paper", PAPER), ("repa", REPA)])
def test_the_preset_resolves_to_the_official_recipe(preset, expected):
    from repackctl.train.config import TrainConfig

    resolved = resolve_settings(flags={"dit.preset": preset}, environ={})
    dit = resolved.settings.dit
    got = {k: getattr(dit, k) for k in expected}
    assert got == expected
    for key in ("latent_sampling", "kernels", "tf32", "flip"):
        origin = resolved.sources.get(f"dit.{key}", "default")
        assert origin == (f"preset {preset}" if key in dit.PRESETS[preset] else "default"), key
    config = TrainConfig.from_settings(resolved.settings, dit, "unused", resolved.sources)
    assert config.tf32 is expected["tf32"] and config.to_dict()["tf32"] is expected["tf32"]


def test_the_small_preset_keeps_tf32_and_fused_kernels_and_a_flag_wins():
    small = resolve_settings(flags={}, environ={}).settings.dit
    assert (small.tf32, small.kernels, small.latent_sampling, small.flip) == (
        True,
        "auto",
        "mean",
        True,
    )
    flags = {"dit.preset": "paper", "dit.tf32": True, "dit.latent_sampling": "sample"}
    paper = resolve_settings(flags=flags, environ={}).settings.dit
    assert (paper.tf32, paper.latent_sampling, paper.kernels) == (True, "sample", "eager")


def test_tf32_off_restores_pytorch_defaults_after_a_run_that_had_it_on():
    from repackctl.train.precision import set_tf32

    before = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        set_tf32(True)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)  # the same process, a paper run next: strict fp32 matmuls again
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32  # PyTorch's default, as the official run had it
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
        torch.backends.cudnn.allow_tf32 = before[2]


# --------------------------------------------------------------------------- the cosine term


def test_the_paper_cosine_term_is_the_official_plain_cosine(cache):
    """LightningDiT's ``1 − cosine_similarity(v̂, v, dim=1)`` (eps 1e-8) has no floor on |v̂|;
    other presets keep ours (|v̂| ≥ 0.01·|v|), which tames the first steps of an adaLN-Zero
    model (v̂ = 0 at init): the official gradient there is ~1e6 times larger."""
    import torch.nn.functional as F

    from repackctl.dit.task import build_task
    from repackctl.transport.loss import velocity_loss

    assert resolve_settings(flags={}, environ={}).settings.dit.cos_norm_floor == 0.01
    target = torch.randn(4, 8, 3, 3)
    for scale in (1.0, 1e-4):  # 1e-4: |v̂| under the floor, where the two rules differ
        pred = scale * torch.randn(4, 8, 3, 3)
        official = (1 - F.cosine_similarity(pred, target, dim=1)).flatten(1).mean(dim=1)
        torch.testing.assert_close(velocity_loss(pred, target, 1.0, 0.0).cos, official)
    floored = velocity_loss(pred, target, 1.0).cos
    assert (floored - official).abs().max() > 1e-3  # the default rule is not the official one

    def first_grad_norm(**flags):
        """The gradient norm of the first step at init (v̂ = 0), and the task."""
        base = {"dit.preset": "paper", "dit.size": "tiny", "dit.global_batch": 8}
        task = build_task(resolve_settings(flags={**base, **flags}).settings)[0]
        modules = task.build()
        out = task.training_step(modules, task.get_batch(np.arange(8), 0, None), 0)
        out.losses["model"].backward()
        grads = [p.grad.norm() for p in modules["model"].parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()), task

    official_norm, task = first_grad_norm()
    assert task.spec.cos_norm_floor == 0.0
    assert task.spec.transport_dict()["cos_norm_floor"] == 0.0  # recorded with the checkpoint
    floored_norm, _ = first_grad_norm(**{"dit.cos_norm_floor": 0.01})
    assert floored_norm < 100 and official_norm > 1e4 * floored_norm


# --------------------------------------------------------------------------- fixed posterior samples


def _task(sampling: str, seed: int = 0):
    from repackctl.dit.task import build_task

    flags = {"dit.latent_sampling": sampling, "dit.repa_weight": 0.0, "seed": seed}
    return build_task(resolve_settings(flags=flags).settings)[0]


def test_fixed_samples_are_drawn_once_per_image_and_flip(cache):
    """The same row and flip give the same latent in every epoch (steps 1 and 5 of 4-step
    epochs) and in any batch split; another flip or another seed gives another sample, and the
    sample is not the mean. ``sample`` draws anew at every step."""
    rows = np.arange(N)
    task = _task("fixed")
    a, b = task.get_batch(rows, 1, None), task.get_batch(rows, 5, None)
    same = (a["flip"] == b["flip"]).numpy()
    assert same.any() and (~same).any()  # both cases occur at this seed
    assert torch.equal(a["x"][same], b["x"][same])
    assert not torch.equal(a["x"][~same], b["x"][~same])
    halves = [task.get_batch(rows[:13], 5, None), task.get_batch(rows[13:], 5, None)]
    assert torch.equal(torch.cat([h["x"] for h in halves]), b["x"])  # any processes / split

    mean = _task("mean").get_batch(rows, 1, None)
    assert torch.equal(mean["flip"], a["flip"])  # flips are drawn the same way in every mode
    assert (a["x"] - mean["x"]).abs().amax() > 1e-3  # a posterior sample, not the mean
    other_seed = _task("fixed", seed=1).get_batch(rows, 1, None)
    assert not torch.equal(other_seed["x"], a["x"])
    fresh = _task("sample")
    fa, fb = fresh.get_batch(rows, 1, None), fresh.get_batch(rows, 5, None)
    assert not torch.equal(fa["x"][same], fb["x"][same])


def test_a_fixed_sampling_run_resumes_bit_identically(cache, tmp_path):
    """Two epochs straight, or one epoch, a resume (a fresh task, a fresh dataset object) and the
    second epoch: the same weights, so each step read the same fixed samples."""

    def run(name: str, *steps: str) -> dict[str, torch.Tensor]:
        for n in steps:
            args = ["train", "dit", *TINY, "--name", name, "--steps", n, "--ckpt-every", "4"]
            res = runner.invoke(app, [*args, "--latent-sampling", "fixed", "--lr", "1e-3"])
            assert res.exit_code == 0, res.output
        return load_weights(latest_checkpoint(tmp_path / "runs" / name), "model")

    straight, resumed = run("straight", "8"), run("resumed", "4", "8")
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k
    run_dir = tmp_path / "runs" / "resumed"
    assert read_state(latest_checkpoint(run_dir))["extra"]["latent_sampling"] == "fixed"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tf32"] is True  # the small preset's, recorded in the run's config
    assert not (run_dir / "sampling.json").exists()  # only paper runs get the official one


# --------------------------------------------------------------------------- paper runs


def _paper(name: str, steps: int, *more: str):
    args = ["train", "dit", "--preset", "paper", *TINY, "--name", name, "--steps", str(steps)]
    return runner.invoke(app, [*args, "--ckpt-every", "2", *more])


def test_a_paper_run_writes_the_official_sampling_json_and_sample_uses_it(cache, tmp_path):
    from repackctl.dit.run import official_sampling_defaults

    res = _paper("paper", 2)
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "paper"
    config = json.loads((run / "config.json").read_text())
    assert config["tf32"] is False and config["extra"]["train"]["kernels"] == "eager"
    assert read_state(latest_checkpoint(run))["extra"]["latent_sampling"] == "fixed"
    defaults = json.loads((run / "sampling.json").read_text())["defaults"]
    assert defaults == official_sampling_defaults()
    assert defaults["steps"] == 249 and defaults["cfg"] == 15.0 and defaults["cfg_channels"] == 3
    assert defaults["shift"] == pytest.approx(1 / 0.3)
    assert defaults["cfg_t_hi"] == pytest.approx(0.89)

    out = tmp_path / "samples"
    args = ["sample", "-r", "paper", "-n", "2", "--steps", "3", "--device", "cpu"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "protocol.json").read_text())
    assert card["cfg_scale"] == 15.0 and card["cfg_legacy_channels"] == 3
    assert card["shift"] == pytest.approx(1 / 0.3)
    assert card["cfg_interval"][1] == pytest.approx(0.89)
    assert card["setting_sources"]["steps"] == "setting"  # a flag still wins
    assert card["setting_sources"]["cfg"] == "sampling.json"

    # one digit of the file changed (a damaged disk, an edit): CFG 15 became 11 for every sample
    path = run / "sampling.json"
    text = path.read_text()
    path.write_text(text.replace('"cfg": 15.0', '"cfg": 11.0', 1))
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "damaged")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    out_text = " ".join(res.output.split())
    assert "sampling.json does not match the sha256 it was written with" in out_text
    assert "Hint:" in out_text and "--cfg" in out_text
    assert not (tmp_path / "damaged").exists()  # refused before anything was written
    path.write_text(text)
    without = {k: v for k, v in json.loads(text).items() if k != "sha256"}
    path.write_text(json.dumps(without))  # written before the checksum: read as it is
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "legacy")])
    assert res.exit_code == 0, res.output


def test_a_failed_paper_start_leaves_no_sampling_json_and_a_users_file_stays(tmp_path):
    from repackctl.dit.run import official_sampling_file

    run = tmp_path / "runs" / "new"
    with pytest.raises(RuntimeError), official_sampling_file(run, "paper"):
        assert (run / "sampling.json").is_file()
        raise RuntimeError("training failed before any checkpoint")
    assert not run.exists()  # the folder this call made, and its file, are gone

    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "sampling.json").write_text('{"defaults": {"steps": 7}}')
    with pytest.raises(RuntimeError), official_sampling_file(mine, "paper"):
        raise RuntimeError("failed")
    assert json.loads((mine / "sampling.json").read_text()) == {"defaults": {"steps": 7}}


def test_a_repa_run_writes_repas_sampling_json_and_sample_uses_it(cache, tmp_path):
    """REPA's evaluation (README.md: ``--mode=sde --num-steps=250 --cfg-scale=1.8
    --guidance-high=0.7``) is the run's sampling default. REPA's time is ours (t = 1 noise:
    ``samplers.py`` integrates ``linspace(1, 0.04, 250)``), so guidance acts for t ≤ 0.7."""
    args = ["train", "dit", "--preset", "repa", *TINY, "--name", "repa", "--steps", "2"]
    res = runner.invoke(app, [*args, "--ckpt-every", "2", "--repa-depth", "1"])  # tiny: 2 blocks
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "runs" / "repa" / "sampling.json").read_text())
    assert doc["defaults"] == {
        "sampler": "sde",
        "steps": 250,
        "shift": 1.0,
        "cfg": 1.8,
        "cfg_t_lo": 0.0,
        "cfg_t_hi": 0.7,
        "cfg_channels": 0,
    }
    assert doc["source"].startswith("REPA sampling settings (sihyun-yu/REPA README.md")
    assert "--preset repa" in doc["source"]
    assert doc["official"]["guidance_high"] == 0.7 and doc["official"]["mode"] == "sde"

    out = tmp_path / "samples"
    sample = ["sample", "-r", "repa", "-n", "2", "--steps", "3", "--device", "cpu"]
    res = runner.invoke(app, [*sample, "--out", str(out)])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "protocol.json").read_text())
    assert card["sampler_spec"]["kind"] == "sde" and card["cfg_scale"] == 1.8
    assert card["cfg_interval"] == [0.0, 0.7] and card["cfg_legacy_channels"] == 0
    assert card["sampler_spec"]["t_last"] == 0.04 and card["sampler_spec"]["last_step"] == "mean"
    assert card["setting_sources"]["sampler"] == "sampling.json"


def test_the_repa_projector_has_repas_init():
    """SiT's ``_basic_init`` covers REPA's projectors: Xavier-uniform weights (bound
    √(6 / (fan_in + fan_out))) and zero biases, at REPA's sizes (SiT-XL 1152 → 2048 → 2048 → 768)."""
    import math

    from repackctl.models.repa import REPAProjector

    torch.manual_seed(0)
    layers = [m for m in REPAProjector(1152, 768, 2048).mlp if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 3
    for layer in layers:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.99 * bound  # the whole range is used
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)  # uniform's std
        assert torch.count_nonzero(layer.bias) == 0


def _as_started_by_an_older_version(run: Path) -> None:
    """The run's stored settings as the paper preset gave them before this version: a fresh
    posterior sample per step, fused kernels by default, and no tf32 setting (TF32 always on)
    nor cos_norm_floor (always 0.01)."""
    path = run / "config.json"
    config = json.loads(path.read_text())
    record = config["extra"]["settings"]
    record["values"]["dit"].update(latent_sampling="sample", kernels="auto")
    del record["values"]["dit"]["tf32"]
    record["sources"].pop("dit.tf32")
    del record["values"]["dit"]["cos_norm_floor"]  # the cosine floor was always 0.01
    record["sources"].pop("dit.cos_norm_floor")
    record["sources"].pop("dit.kernels")
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))


def test_resuming_an_older_paper_run_keeps_its_recipe_or_refuses_a_change(cache, tmp_path):
    res = _paper("old", 2)
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "old"
    _as_started_by_an_older_version(run)

    # a flag that changes a setting the run started without: refused, named, no traceback
    refused = _paper("old", 3, "--no-tf32")
    assert refused.exit_code == 2 and "dit.tf32" in refused.output
    assert "--allow-change tf32" in refused.output and "Traceback" not in refused.output
    refused = _paper("old", 3, "--latent-sampling", "fixed")
    assert refused.exit_code == 2 and "dit.latent_sampling" in refused.output
    assert "Traceback" not in refused.output
    assert read_state(latest_checkpoint(run))["step"] == 2

    # nothing given: the run goes on with the values it started with, and says so; a setting
    # that --allow-change names takes the preset's current value
    more = _paper("old", 3, "--allow-change", "kernels")
    assert more.exit_code == 0, more.output
    # (latent_sampling, which the preset filled in, is kept by the settings layer's resume rule;
    # tf32, which the run never recorded, by train dit's own, which says so)
    assert "dit.tf32: kept True" in more.output and "dit.kernels: kept" not in more.output
    assert "dit.cos_norm_floor: kept 0.01" in more.output
    record = json.loads((run / "config.json").read_text())
    values = record["extra"]["settings"]["values"]["dit"]
    assert (values["latent_sampling"], values["kernels"], values["tf32"]) == (
        "sample",
        "eager",
        True,
    )
    assert record["tf32"] is True and values["cos_norm_floor"] == 0.01
    assert read_state(latest_checkpoint(run))["extra"]["latent_sampling"] == "sample"
