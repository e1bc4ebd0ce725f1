"""Refiner stage: triplets in the cache (resumable, noised), forward/backward, training through the
loop, the latent-convention check, and `sample --refiner` = `sample` + `refine apply`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.ckpt_state import write_state
from support.stack import _images, _settings, shared_stack, tiny_refine_task
from typer.testing import CliRunner

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry
from repackctl.cli.app import app
from repackctl.errors import CheckpointError
from repackctl.pack.load import load_pack
from repackctl.refine.load import load_refiner
from repackctl.refine.triplets import build_triplets, open_triplets
from repackctl.sample.run import run_sample
from repackctl.settings import resolve_settings


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _entry(stack) -> tuple[DatasetEntry, object]:
    pack = load_pack("pack-tiny", runs=stack["runs"])
    return DatasetEntry.open(stack["cache"], pack.extra["cache"]["entry"]), pack


def test_triplets_resume_and_noise(stack) -> None:
    entry, pack = _entry(stack)
    feats = pack.extra["cache"]["features"]
    first = build_triplets(entry, feats, pack)
    assert first.written + first.already_done == 16
    grp = open_triplets(entry, pack.pack_id, 0.0)
    lat, rec = grp["latent"][:], grp["recon"][:]
    assert lat.shape == (16, 2, 4, 4, 4) and rec.shape == (16, 2, 32, 32, 3)
    # the raw latent is the posterior mean of the cached tokens
    tok = torch.from_numpy(np.asarray(entry.features(feats)["tokens"][:2, 0], np.float32))
    with torch.no_grad():
        mean = pack.model.encode(tok, (4, 4)).mode()
    np.testing.assert_allclose(lat[:2, 0], mean.numpy(), atol=1e-5)
    # a shard that was not marked done (killed writer) is redone, and only that one
    grp.done[8:16] = PENDING
    grp["recon"][8:16] = 0
    again = build_triplets(entry, feats, pack)
    assert again.written == 8 and again.already_done == 8
    assert np.array_equal(grp["recon"][:], rec) and (grp.done_mask() == WRITTEN).all()
    noisy = build_triplets(entry, feats, pack, noise=0.5, seed=1)
    assert noisy.group.endswith("--noise0.5")
    nlat = open_triplets(entry, pack.pack_id, 0.5)["latent"][:]
    assert 0.3 < float(np.std(nlat - lat)) < 0.7
    # `cache info` lists both groups: the ids `cache rm --triplets` takes (it listed none)
    res = CliRunner().invoke(app, ["cache", "info", entry.name, "--cache", stack["cache"]])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and noisy.group in out and "16 written" in out


def test_refiner_forward_backward(stack) -> None:
    task, _ = tiny_refine_task(stack, build=True)
    modules = task.build()
    batch = task.get_batch(np.arange(4), 0, np.random.default_rng(0))
    assert batch["gt"].shape == (4, 3, 32, 32) and batch["z"].shape == (4, 4, 4, 4)
    out = task.training_step(modules, batch, 0)
    assert list(out.losses) == ["model", "disc"]
    out.losses["model"].backward()
    assert all(p.grad is not None for p in modules["model"].parameters())
    for p in modules["disc"].parameters():
        p.grad = None
    out.losses["disc"].backward()
    assert modules["disc"].main[0].weight.grad.abs().sum() > 0
    assert task.state_extra()["latent_convention"] == "raw"


def test_train_apply_and_latent_convention(stack, tmp_path) -> None:
    runner = CliRunner()
    args = [
        "refine",
        "train",
        "--pack-run",
        "pack-tiny",
        "--name",
        "refine-tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--base-channels",
        "8",
        "--disc-channels",
        "8",
        "--ckpt-every",
        "2",
        "--cache",
        stack["cache"],
        "--runs",
        stack["runs"],
        "--device",
        "cpu",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    handle = load_refiner(stack["runs"], "refine-tiny")
    assert handle.extra["latent_convention"] == "raw" and handle.extra["stage"] == "refine"

    # sample → refine apply equals sample --refiner
    plain = run_sample(_settings(stack, run="dit-tiny", num=4, steps=3, out=str(tmp_path / "p")))
    fused = run_sample(
        _settings(
            stack, run="dit-tiny", num=4, steps=3, refiner="refine-tiny", out=str(tmp_path / "f")
        )
    )
    r = runner.invoke(
        app,
        [
            "refine",
            "apply",
            str(plain.out_dir),
            "--refiner",
            "refine-tiny",
            "--runs",
            stack["runs"],
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    applied = tmp_path / "p--refine-tiny"  # not "--refine-refine-tiny"
    assert np.array_equal(_images(applied), _images(fused.out_dir))
    assert not np.array_equal(_images(applied), _images(plain.out_dir))
    assert json.loads((applied / "protocol.json").read_text())["refiner"]["sha256"] == handle.sha256
    # refine apply on samples that `sample --refiner` already refined (same folder name): no
    # false "other settings" error, nothing rewritten
    root = tmp_path / "samples-root"
    base = run_sample(_settings(stack, run="dit-tiny", num=4, steps=3).model_copy(
        update={"samples": str(root)}))  # fmt: skip
    done = run_sample(_settings(stack, run="dit-tiny", num=4, steps=3, refiner="refine-tiny")
                      .model_copy(update={"samples": str(root)}))  # fmt: skip
    assert done.out_dir.name == base.out_dir.name + "--refine-tiny"
    before = {p.name: p.stat().st_mtime_ns for p in done.out_dir.glob("*.png")}
    again = ["refine", "apply", str(base.out_dir), "--refiner", "refine-tiny", "--runs",
             stack["runs"], "--device", "cpu"]  # fmt: skip
    r = runner.invoke(app, again)
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime_ns for p in done.out_dir.glob("*.png")} == before

    # a refiner checkpoint claiming another latent convention is refused, by name
    state_path = handle.checkpoint / "state.json"
    state = json.loads(state_path.read_text())
    state["extra"]["latent_convention"] = "normalised"
    write_state(state_path, state)
    with pytest.raises(CheckpointError, match="normalised"):
        load_refiner(stack["runs"], "refine-tiny")
    r = runner.invoke(
        app,
        [
            "sample",
            "-r",
            "dit-tiny",
            "-n",
            "2",
            "--refiner",
            "refine-tiny",
            "--runs",
            stack["runs"],
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code != 0 and "raw" in r.output and "Traceback" not in r.output
    settings = resolve_settings(None, {"runs": stack["runs"]}).settings
    assert settings.refine.output == "image"
