"""Stage 1 end to end: `pack train` (RePack and PCA), `pack encode`, `evaluate recon` / `probe`.

Real Zarr caches written by `repackctl extract` (patchpix encoder at 32 px, a 4×4 token grid;
the built-in encoder for the probe), real training runs, real subprocesses for kill -9 / resume
and for two processes with torchrun's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import one_torch_thread, subprocess_env
from safetensors.torch import load_file
from support.launch import start_two
from typer.testing import CliRunner

from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.cli.evaluate_pack import register_into
from repackctl.errors import CheckpointError
from repackctl.settings import resolve_settings

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SRC = ["--encoder", "patchpix", "--resolution", "32"]
# a tiny decoder: 4×4 grid → 32 px, 8 channels, d = 4
TINY = [*SRC, "-c", "4", "--ch", "8", "--batch-size", "8", "--log-every", "2", "--image-every", "0"]


def _extract(cache: Path, split: str, num: int, encoder: str = "patchpix") -> None:
    from repackctl.extract import run_extract

    flags = {
        "cache": str(cache),
        "num_workers": 0,
        "extract.encoder": encoder,
        "extract.split": split,
        "extract.num": num,
        "extract.resolution": 32,
        "extract.chunk": 8,
        "extract.shard": 16,
    }
    run_extract(resolve_settings(None, flags, environ={}).settings)


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    """A patchpix cache with train (48 images, 3 shards) and val (24) entries at 32 px."""
    cache = tmp_path_factory.mktemp("pack-cache") / "cache"
    _extract(cache, "train", 48)
    _extract(cache, "val", 24)
    return cache


@pytest.fixture
def cache(base_cache, tmp_path) -> Path:
    """A private copy of the module's cache (tests write latents into it)."""
    dst = tmp_path / "cache"
    shutil.copytree(base_cache, dst)
    return dst


def _settings(**pack):
    flags = {f"pack.{k}": v for k, v in pack.items()}
    return resolve_settings(None, flags).settings


def _train(name: str, *extra: str) -> None:
    res = runner.invoke(app, ["pack", "train", *TINY, "--name", name, *extra])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output


def _eval_app() -> typer.Typer:
    """The `evaluate` group as cli/evaluate_cmd.py builds it (recon and probe registered)."""
    root = typer.Typer()
    group = typer.Typer()

    @group.callback()
    def _cb() -> None:
        """evaluate"""

    register_into(group)
    root.add_typer(group, name="evaluate")
    return root


def _ckpt(tmp_path: Path, name: str) -> Path:
    from repackctl.train.checkpoint import latest_checkpoint

    return latest_checkpoint(tmp_path / "runs" / name)


# --------------------------------------------------------------------------- task and data


def test_task_batches_posterior_and_losses(cache):
    from repackctl.pack.data import PackData, locate_features
    from repackctl.pack.task import PackTask, resolve_plan

    s = _settings(encoder="patchpix", resolution=32, latent_channels=4, ch=8, gan_start=0, run="t")
    ref = locate_features(s)
    plan = resolve_plan(s, ref)
    assert plan.preset == "small" and plan.autoencoder.decoder.latent_size == 4
    # the small preset's named deviations: whitened tokens, 4 GroupNorm groups, the built-in
    # encoder's feature distance; paper: none of them
    assert plan.autoencoder.projection.whiten and plan.autoencoder.decoder.max_groups == 4
    assert plan.loss.feature == 1.0 and plan.loss.scale_equivariance == 1.0
    paper = resolve_plan(_settings(encoder="patchpix", resolution=32, preset="paper"), ref)
    assert not paper.autoencoder.projection.whiten and paper.autoencoder.decoder.max_groups == 32
    assert paper.loss.feature == 0.0 and paper.loss.scale_equivariance == 0.0
    off = resolve_plan(
        _settings(encoder="patchpix", resolution=32, whiten=False, feature_weight=0.0), ref
    )
    assert not off.autoencoder.projection.whiten and off.loss.feature == 0.0
    pca = resolve_plan(_settings(encoder="patchpix", resolution=32, method="pca"), ref)
    assert not pca.autoencoder.projection.whiten  # whitening is the repack projection's option
    assert plan.notes and "perceptual loss is off" in plan.notes[0]  # no LPIPS file given
    data = PackData(ref.entry, ref.feats, in_memory=False, buffer_chunks=2)
    mem = PackData(ref.entry, ref.feats, in_memory=True)
    gen = np.random.default_rng(3)
    batch = data.get(np.arange(10, 22), gen)
    again = mem.get(np.arange(10, 22), np.random.default_rng(3))
    for k in batch:  # block reads and the in-memory copy give the same samples
        torch.testing.assert_close(batch[k], again[k], rtol=0, atol=0)
    assert batch["tokens"].shape == (12, 16, 64) and batch["images"].shape == (12, 3, 32, 32)
    flips = batch["flip"].numpy()
    assert 0 < flips.sum() < 12  # both flips drawn
    tokens = ref.feats["tokens"][10:22]  # (12, F, T, C)
    images = ref.entry.images[10:22]
    for j, f in enumerate(flips):
        np.testing.assert_array_equal(batch["tokens"][j].numpy(), tokens[j, f].astype(np.float32))
        img = images[j][:, ::-1] if f else images[j]  # the mirrored image for flip 1
        expect = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(batch["images"][j], expect)

    task = PackTask(plan, data, ref)
    torch.manual_seed(0)
    modules = task.build()
    model = modules["model"]
    # the whitening is fitted on the entry's tokens and fixed: it decorrelates them
    white = (batch["tokens"] - model.projection.token_mean) @ model.projection.token_whitening
    assert bool(model.projection.whitening_fitted)
    assert not any(b.requires_grad for b in model.projection.buffers())
    assert white.reshape(-1, 64).std(0).mean() == pytest.approx(1.0, rel=0.3)
    post = model.encode(batch["tokens"])
    assert post.mean.shape == (12, 4, 4, 4) and (post.std > 0).all()
    assert float(post.kl().detach()) > 0
    z1, z2 = post.sample(), post.sample()
    assert not torch.equal(z1, z2)  # sampled during training …
    r1, _ = model(batch["tokens"], sample=False)
    r2, _ = model(batch["tokens"], sample=False)
    assert torch.equal(r1, r2) and r1.shape == (12, 3, 32, 32)  # … the mode for evaluation
    out = task.training_step(modules, batch, step=0)
    assert set(out.losses) == {"gen", "disc"}
    keys = ("loss/l1", "loss/ffl", "loss/feature", "loss/scale_equivariance", "loss/kl")
    for key in (*keys, "loss/gan", "loss/disc"):
        assert key in out.logs and np.isfinite(float(out.logs[key])), key
    assert float(out.logs["loss/feature"]) > 0  # the decoder's images are not the originals yet
    # the KL is weighted in the paper's convention: 1e-6 · latent_numel / image_numel
    assert plan.loss.kl == pytest.approx(1e-6 * 4 * 16 / (3 * 32 * 32))
    # before gan_start only the generator trains
    task.plan.loss = type(plan.loss)(**{**plan.loss.to_dict(), "gan_start": 5})
    task.build()
    assert set(task.training_step(modules, batch, step=0).losses) == {"gen"}


def test_pca_fit_is_deterministic_and_exact(cache, tmp_path):
    from repackctl.pack.data import PackData, locate_features
    from repackctl.pack.task import fit_token_pca

    ref = locate_features(_settings(encoder="patchpix", resolution=32))
    data = PackData(ref.entry, ref.feats)
    a = fit_token_pca(data, 4, None)
    b = fit_token_pca(PackData(ref.entry, ref.feats, in_memory=False), 4, None)
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)
    # against a direct eigen-decomposition of all tokens of both flips
    x = ref.feats["tokens"][:].astype(np.float64).reshape(-1, 64)
    w, v = np.linalg.eigh(np.cov(x, rowvar=False))
    top = v[:, ::-1][:, :4].T  # (4, C)
    np.testing.assert_allclose(np.abs((a.components.numpy() * top).sum(1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(a.explained_variance.numpy(), w[::-1][:4], rtol=1e-9)

    # `pack train --method pca` freezes exactly that fit and trains the decoder on top
    _train("pca", "--method", "pca", "--steps", "2")
    sd = load_file(str(_ckpt(tmp_path, "pca") / "ema.safetensors"))
    torch.testing.assert_close(sd["projection.components"], a.components.float())
    state = json.loads((_ckpt(tmp_path, "pca") / "state.json").read_text())
    assert state["extra"]["method"] == "pca" and "loss/kl" not in (
        json.loads((tmp_path / "runs" / "pca" / "metrics.jsonl").read_text().splitlines()[-1])
    )
    assert json.loads((tmp_path / "runs" / "pca" / "pca.json").read_text())["count"] == 48 * 32


# --------------------------------------------------------------------------- train: resume


def _pack_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "repackctl", "pack", *args]


@pytest.mark.slow
def test_train_resume_after_kill9_is_bit_identical(cache, tmp_path):
    env = subprocess_env(tmp_path)
    args = ["train", *TINY, "--steps", "12", "--ckpt-every", "4", "--gan-start", "3"]
    with one_torch_thread():  # the uninterrupted run in-process, one thread like the others
        full = runner.invoke(app, ["pack", *args, "--name", "full"])
    assert full.exit_code == 0, full.output

    ckdir = tmp_path / "runs" / "killed" / "checkpoints"
    proc = subprocess.Popen(
        _pack_cmd(tmp_path, *args, "--name", "killed"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (ckdir / "step-0000004").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckdir / "step-0000004").exists()
    assert not (ckdir / "step-0000012").exists(), "the run finished before the kill"
    # the rerun in this process (one thread, as the killed one): the kill is the real process,
    # the rerun only reads what it left
    with one_torch_thread():
        again = runner.invoke(app, ["pack", *args, "--name", "killed"])
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.output
    a, b = _ckpt(tmp_path, "full"), _ckpt(tmp_path, "killed")
    assert a.name == b.name == "step-0000012"
    for f in ("model", "ema", "disc"):
        wa, wb = load_file(str(a / f"{f}.safetensors")), load_file(str(b / f"{f}.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (f, k)
    cfg = json.loads((tmp_path / "runs" / "killed" / "config.json").read_text())
    assert cfg["extra"]["settings"]["values"]["pack"]["encoder"] == "patchpix"


@pytest.mark.slow
def test_resume_keeps_the_preset_values_a_run_started_with(cache, tmp_path, monkeypatch):
    from repackctl.settings.pack import PackSettings

    # a run started under an older `small` preset, which had no feature term
    with monkeypatch.context() as m:
        m.setitem(PackSettings.PRESETS["small"], "feature_weight", 0.0)
        _train("lw", "--steps", "2", "--ckpt-every", "2")
    # resumed under today's preset (feature weight 1), it keeps the weight it started with, as
    # it keeps every value its preset filled in (``--preset auto`` is not resolved again)
    _train("lw", "--steps", "4", "--ckpt-every", "2")
    state = json.loads((_ckpt(tmp_path, "lw") / "state.json").read_text())
    assert state["step"] == 4 and state["extra"]["plan"]["loss"]["feature"] == 0.0
    config = tmp_path / "runs" / "lw" / "config.json"
    record = json.loads(config.read_text())["extra"]["settings"]
    # recorded with the source it started with (the resume kept it as stored: the record
    # said "stored run config", so a resume that changed nothing rewrote config.json)
    assert record["values"]["pack"]["feature_weight"] == 0.0
    assert record["sources"]["pack.feature_weight"] == "preset small"
    # a run whose record predates the setting (an older version wrote none): the preset's new
    # value is refused by the loss check, nothing is written
    data = json.loads(config.read_text())
    del data["extra"]["settings"]["values"]["pack"]["feature_weight"]
    del data["extra"]["settings"]["sources"]["pack.feature_weight"]
    data.pop("config_sha256")  # that version wrote no sha256 of the file either
    config.write_text(json.dumps(data))
    step4 = _ckpt(tmp_path, "lw")
    before = load_file(str(step4 / "model.safetensors"))
    args = ["pack", "train", *TINY, "--name", "lw", "--steps", "6", "--ckpt-every", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "loss weight feature = 0.0, now 1.0" in res.output and "--feature-weight" in res.output
    assert _ckpt(tmp_path, "lw") == step4  # nothing written, nothing lost
    assert all(
        torch.equal(v, load_file(str(step4 / "model.safetensors"))[k]) for k, v in before.items()
    )
    # resumed with the weight it was started with, it continues
    _train("lw", "--steps", "6", "--ckpt-every", "2", "--feature-weight", "0")
    assert _ckpt(tmp_path, "lw").name == "step-0000006"
    # --allow-change takes the names the settings layer takes: the setting, dotted, or all
    from repackctl.pack.losses import LossConfig
    from repackctl.pack.task import _check_resume_loss

    now = {"loss": LossConfig(feature=1.0).to_dict()}
    for allow in (["feature_weight"], ["pack.feature_weight"], ["all"]):
        _check_resume_loss("lw", {"loss": LossConfig().to_dict()}, now, allow)
    with pytest.raises(CheckpointError, match="feature"):
        _check_resume_loss("lw", {"loss": LossConfig().to_dict()}, now, ["gan_weight"])


def test_whiten_is_refused_with_the_pca_method_and_off_by_preset():
    from repackctl.errors import ConfigError

    assert _settings(method="pca").pack.whiten is False  # the small preset whitens repack only
    assert _settings(method="repack").pack.whiten is True
    with pytest.raises(ConfigError, match="pack.whiten"):
        _settings(method="pca", whiten=True)  # it used to be ignored
    # the same for the official projection form (the paper preset's: folded for pca)
    assert _settings(method="pca", preset="paper").pack.projection_form == "folded"
    assert _settings(method="repack", preset="paper").pack.projection_form == "official"
    with pytest.raises(ConfigError, match="pack.projection_form official"):
        _settings(method="pca", projection_form="official")


# --------------------------------------------------------------------------- encode


def _latents(cache: Path, entry: str = "builtin-n48--train--32px"):
    e = DatasetEntry.open(str(cache), entry)
    (pid,) = e.latent_ids()
    return e, e.latents(pid)


_KILL_AFTER_TWO_SHARDS = """
import os, signal, sys
import repackctl.pack.encode as enc
orig, calls = enc._encode_shard, [0]
def shard(*a, **k):
    calls[0] += 1
    if calls[0] == 3:  # two shards written and marked done, the third in progress
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(*a, **k)
enc._encode_shard = shard
from repackctl.cli.app import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_encode_stats_exact_resumable_and_process_independent(cache, tmp_path):
    from repackctl.pack.load import load_pack

    _train("enc", "--steps", "2", "--gan-start", "100")
    env = subprocess_env(tmp_path)
    # 1) killed with -9 after two of three shards, then resumed: no gap
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_TWO_SHARDS, "pack", "encode", "--run", "enc"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL
    entry, grp = _latents(cache)
    assert (grp.done_mask() == WRITTEN).sum() == 32 and "stats" not in grp.attrs
    res = runner.invoke(app, ["pack", "encode", "--run", "enc"])
    assert res.exit_code == 0, res.output
    assert "already done" in res.output
    entry, grp = _latents(cache)
    assert (grp.done_mask() == WRITTEN).all()
    means = grp["mean"][:]
    assert means.shape == (48, 2, 4, 4, 4) and means.dtype == np.float16
    assert grp["std"].chunks == (8, 2, 4, 4, 4)  # chunked like the features

    # the stored means are the projection of the cached tokens
    handle = load_pack("enc")
    tok = torch.from_numpy(entry.features(handle.features_id)["tokens"][:].astype(np.float32))
    direct = handle.model.encode(tok.flatten(0, 1)).mean.half().reshape(48, 2, 4, 4, 4)
    np.testing.assert_array_equal(means, direct.numpy())

    # 2) exact stats: a numpy float64 computation over the stored means
    stats = grp.attrs["stats"]
    z = means.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], z.mean(axis=(0, 1, 3, 4)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats["std"], z.std(axis=(0, 1, 3, 4)), rtol=1e-10)
    assert stats["count"] == 48 * 2 * 16
    saved = json.loads((handle.checkpoint / "latent_stats.json").read_text())
    assert saved["mean"] == stats["mean"] and saved["std"] == stats["std"]
    assert load_pack("enc").latent_stats["pack_id"] == handle.pack_id

    # 3) two processes (torchrun's environment) into a fresh copy give identical bytes and identical stats
    other = tmp_path / "cache2"
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(cache, other)
    e2 = DatasetEntry.open(str(other), entry.name)
    shutil.rmtree(other / entry.name / "latents")
    del e2
    two = start_two(
        [str(REPO / "repackctl" / "__main__.py"), "pack", "encode", "-r", "enc"],
        subprocess_env(tmp_path, REPACKCTL_CACHE=str(other)),
    )
    code, _, err = two.wait()
    assert code == 0, err[-2000:]
    _, grp2 = _latents(other)
    assert grp2.attrs["stats"]["mean"] == stats["mean"]  # bit-identical floats
    assert grp2.attrs["stats"]["std"] == stats["std"]
    np.testing.assert_array_equal(grp2["mean"][:], means)


def test_encode_errors_name_both_encoders_and_the_extract_command(cache, tmp_path):
    _train("mis", "--steps", "1")
    res = runner.invoke(app, ["pack", "encode", "--run", "mis", "--features", "dinov3-x--final"])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "patchpix--final--32px" in res.output and "dinov3-x--final" in res.output
    # a split that was never extracted: the hint is the exact extract command
    res = runner.invoke(app, ["pack", "encode", "--run", "mis", "--split", "test"])
    assert res.exit_code != 0
    assert "repackctl extract --encoder patchpix --data builtin --split test --resolution 32" in (
        " ".join(res.output.split())
    )
    # no features at all for another encoder
    res = runner.invoke(app, ["pack", "train", "--encoder", "builtin", "--weights", "random"])
    assert res.exit_code != 0
    assert "repackctl extract --encoder builtin --data builtin --weights random" in " ".join(
        res.output.split()
    )


# --------------------------------------------------------------------------- evaluate


def test_evaluate_recon_through_the_command(cache, tmp_path):
    from repackctl.files import to_uint8
    from repackctl.metrics.recon import psnr, ssim
    from repackctl.pack.load import load_pack

    _train("rec", "--steps", "2", "--gan-start", "100")
    res = runner.invoke(_eval_app(), ["evaluate", "recon", "--run", "rec", "--split", "val"])
    assert res.exit_code == 0, res.output
    ckpt = _ckpt(tmp_path, "rec")
    report = json.loads((ckpt / "recon-builtin-n24--val--32px.json").read_text())
    assert report["n"] == 24 and report["entry"] == "builtin-n24--val--32px"
    # the numbers are those of the decoder's posterior-mean reconstructions of the val images
    handle = load_pack("rec")
    val = DatasetEntry.open(str(cache), "builtin-n24--val--32px")
    tok = torch.from_numpy(val.features(handle.features_id)["tokens"][:, 0].astype(np.float32))
    with torch.no_grad():
        rec = to_uint8(handle.model.decode(handle.model.encode(tok).mode()))
    assert report["psnr"] == pytest.approx(psnr(val.images[:], rec).mean, rel=1e-9)
    assert report["ssim"] == pytest.approx(ssim(val.images[:], rec), rel=1e-9)
    assert 5 < report["psnr"] < 60 and report["rfid"] is None
    assert f"{report['psnr']:.2f} dB" in res.output
    from PIL import Image

    grid = Image.open(report["grid"])
    assert grid.size[1] == 2 * 32 + 3 * 2  # two rows (original, recon) with padding
    # a subset (-n) is its own report: it replaced the whole split's under the same name
    whole = (ckpt / "recon-builtin-n24--val--32px.json").read_bytes()
    res = runner.invoke(_eval_app(), ["evaluate", "recon", "--run", "rec", "--split", "val",
                                      "-n", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (ckpt / "recon-builtin-n24--val--32px.json").read_bytes() == whole
    sub = json.loads((ckpt / "recon-builtin-n24--val--32px-n4.json").read_text())
    assert sub["n"] == 4 and (ckpt / "recon-builtin-n24--val--32px-n4.png").is_file()


@pytest.mark.skipif(
    not (REPO / "repackctl" / "encoders" / "weights" / "builtin.safetensors").is_file(),
    reason="the shipped built-in encoder weights are not built in this checkout",
)
def test_probe_beats_chance_on_builtin_features(tmp_path):
    cache = tmp_path / "cache"
    _extract(cache, "train", 200, encoder="builtin")
    _extract(cache, "val", 60, encoder="builtin")
    assert len(list_entries(str(cache))) == 2
    res = runner.invoke(
        app,
        ["pack", "train", "--encoder", "builtin", "--resolution", "32", "-c", "4", "--ch", "8"]
        + ["--steps", "2", "--batch-size", "8", "--image-every", "0", "--name", "pb"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(_eval_app(), ["evaluate", "probe", "--run", "pb", "--epochs", "30"])
    assert res.exit_code == 0, res.output
    report = json.loads(
        (_ckpt(tmp_path, "pb") / "probe-builtin-n60--val--32px-epochs30.json").read_text()
    )
    rows = {r["name"].split(" ")[0]: r for r in report["rows"]}
    assert report["num_classes"] == 10
    assert rows["encoder"]["top1"] > 0.3  # chance is 0.1
    assert rows["encoder"]["num_params"] == 96 * 10 + 10
    assert rows["PCA-4"]["num_params"] == 4 * 10 + 10
    assert "| Representation | dims | #params | top-1 % |" in res.output


def test_stages_chain_to_the_newest_extracted_features(tmp_path):
    """After `extract` at a non-default encoder and size, bare `pack train` / `pack encode` use it."""
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", "16",
                              "--chunk", "8", "--shard", "16"])  # fmt: skip
    assert res.exit_code == 0, res.output
    small = ["--steps", "2", "--batch-size", "8", "--ch", "16", "-c", "4", "--image-every", "0"]
    res = runner.invoke(app, ["pack", "train", *small, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "using cache entry builtin-n16--train--32px" in res.output and "patchpix" in res.output
    res = runner.invoke(app, ["pack", "encode", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "pack-patchpix-repack" in res.output
    # resuming with only --steps keeps the run's sizes and lr; a new lr is refused by name
    res = runner.invoke(app, ["pack", "train", "--steps", "3", "--image-every", "0"])
    assert res.exit_code == 0, res.output
    assert "pack.steps: 2 → 3" in res.output
    res = runner.invoke(app, ["pack", "train", "--steps", "4", "--lr", "0.5"])
    assert res.exit_code == 2 and "pack.lr" in res.output and "--allow-change" in res.output
    # the user named other data: no guessing, the error names what to run
    res = runner.invoke(app, ["pack", "train", *small, "--resolution", "64"])
    assert (
        res.exit_code != 0 and "repackctl extract" in res.output and "Traceback" not in res.output
    )
