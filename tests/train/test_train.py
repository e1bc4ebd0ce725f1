"""Tests of the training loop: sampler, EMA, schedules, accumulation, NaN guard, checkpoints,
resume after a real ``kill -9``, and two real processes with torchrun's environment (CPU, gloo;
``support/launch.py``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from support import train_toy_script as toy
from support.launch import Job, start_two
from torch import nn

from repackctl.errors import CheckpointError, ConfigError, TrainingError
from repackctl.train import (
    EMA,
    BlockSampler,
    Position,
    TrainConfig,
    latest_checkpoint,
    load_model_weights,
    read_state,
    train,
)
from repackctl.train.checkpoint import load_optim, load_weights
from repackctl.train.logging import read_metrics
from repackctl.train.sampler import local_micro_batches
from repackctl.train.schedule import lr_at, make_scheduler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[1] / "support" / "train_toy_script.py"


@pytest.fixture(autouse=True)
def one_thread():
    """Same thread count as the subprocesses, so in-process runs reproduce them bit for bit."""
    with one_torch_thread():
        yield


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    return env


def _run_toy(argv: list[str]):
    args = toy.parse(argv)
    task = toy.task_from_args(args)
    return task, train(task, toy.config_from_args(args))


def _weights(ckpt: Path, names=("model", "ema", "disc")) -> dict[str, torch.Tensor]:
    out = {}
    for n in names:
        out.update({f"{n}.{k}": v for k, v in load_weights(ckpt, n).items()})
    return out


# --------------------------------------------------------------------------- sampler


def test_sampler_covers_each_index_once_per_epoch_and_keeps_blocks():
    s = BlockSampler(50, seed=3, block=4, buffer_blocks=3)
    for epoch in range(3):
        order = s.epoch_order(epoch)
        assert sorted(order.tolist()) == list(range(50))
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))
    # every buffer of 3 blocks (12 positions) holds whole blocks only
    order = BlockSampler(48, seed=3, block=4, buffer_blocks=3).epoch_order(0)
    for lo in range(0, 48, 12):
        members = sorted(order[lo : lo + 12].tolist())
        blocks = sorted({i // 4 for i in members})
        assert len(blocks) == 3 and members == [i for b in blocks for i in range(4 * b, 4 * b + 4)]
    # a buffer of one block: each block's samples stay together (shuffled among themselves)
    plain = BlockSampler(50, seed=3, block=5, buffer_blocks=1).epoch_order(0)
    for lo in range(0, 50, 5):
        run = sorted(plain[lo : lo + 5].tolist())
        assert run[0] % 5 == 0 and run == list(range(run[0], run[0] + 5))
    # block=1 is a plain permutation, deterministic in the seed
    a = BlockSampler(50, seed=3).epoch_order(0)
    assert np.array_equal(a, BlockSampler(50, seed=3).epoch_order(0))
    assert not np.array_equal(a, BlockSampler(50, seed=4).epoch_order(0))


def test_sampler_resume_and_process_split_keep_the_global_order():
    s = BlockSampler(30, seed=1, block=4, buffer_blocks=2)
    pos, batches = Position(), []
    for _ in range(7):  # 7 * 8 = 56 > 30: batches straddle epochs
        idx, pos = s.take(pos, 8)
        batches.append(idx)
    stream = np.concatenate([s.epoch_order(0), s.epoch_order(1)])[:56]
    assert np.array_equal(np.concatenate(batches), stream)
    # resume: a fresh sampler from a saved position continues identically
    pos = Position()
    for _ in range(3):
        _, pos = s.take(pos, 8)
    saved = json.loads(json.dumps(pos.__dict__))
    fresh, pos2 = BlockSampler(30, seed=1, block=4, buffer_blocks=2), Position(**saved)
    for expected in batches[3:]:
        idx, pos2 = fresh.take(pos2, 8)
        assert np.array_equal(idx, expected)
    # W=2 x A=2 and W=1 x A=4 see the same micro-batches in the same order
    g = batches[0]
    two = [m for r in range(2) for m in local_micro_batches(g, r, 2, 2)]
    one = local_micro_batches(g, 0, 1, 4)
    assert all(np.array_equal(a, b) for a, b in zip(two, one, strict=True))
    with pytest.raises(ConfigError):
        local_micro_batches(g, 0, 3, 1)


# --------------------------------------------------------------------------- EMA, schedules, config


def test_ema_math_and_warmup():
    torch.manual_seed(0)
    model = nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(ema.module.running_mean, model.running_mean)  # buffers copied
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 0.9 * 1.1 + 0.1 * 2.0))
    warm = EMA(model, decay=0.9999, warmup=True)
    assert warm.current_decay() == pytest.approx(1 / 10)
    warm.updates = 90
    assert warm.current_decay() == pytest.approx(91 / 100)
    warm.updates = 10**6
    assert warm.current_decay() == 0.9999


def test_schedules():
    step = toy.make_config("r", steps=400, lr=2e-4, schedule="step", drop_step=240, drop_lr=1e-4)
    assert lr_at(step, 239) == 2e-4 and lr_at(step, 240) == 1e-4 and lr_at(step, 399) == 1e-4
    warm = toy.make_config("r", steps=100, lr=1e-3, schedule="warmup", warmup_steps=10)
    assert lr_at(warm, 0) == pytest.approx(1e-4) and lr_at(warm, 9) == pytest.approx(1e-3)
    assert lr_at(warm, 50) == 1e-3
    cos = toy.make_config("r", steps=101, lr=1e-3, schedule="cosine", min_lr=1e-5)
    assert lr_at(cos, 0) == pytest.approx(1e-3) and lr_at(cos, 100) == pytest.approx(1e-5)
    assert lr_at(cos, 50) == pytest.approx((1e-3 + 1e-5) / 2)
    # the real scheduler follows the same function, scaled to another base lr (a discriminator)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=5e-4)
    sched = make_scheduler(opt, step)
    seen = []
    for _ in range(400):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[239] == pytest.approx(5e-4) and seen[240] == pytest.approx(2.5e-4)


def test_config_round_trip_and_errors(tmp_path):
    c = toy.make_config(str(tmp_path), steps=5, betas=(0.5, 0.9), clip_grad=1.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({**c.to_dict(), "lrr": 1})
    with pytest.raises(ConfigError) as e:
        toy.make_config("r", schedule="linear")
    assert "cosine" in e.value.hint
    with pytest.raises(ConfigError):
        toy.make_config("r", global_batch=8, grad_accum=3)


# --------------------------------------------------------------------------- the loop in-process


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    common = ["--steps", "6", "--ckpt-every", "100", "--noise", "0", "--gan"]
    _, one = _run_toy([str(tmp_path / "b8"), "--global-batch", "8", *common])
    _, acc = _run_toy([str(tmp_path / "b4x2"), "--global-batch", "8", "--grad-accum", "2", *common])
    a, b = _weights(one.checkpoint), _weights(acc.checkpoint)
    assert a.keys() == b.keys()
    start = toy.ToyTask(gan=True).build()["model"].state_dict()
    assert not torch.allclose(a["model.0.weight"], start["0.weight"])  # it did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_prefetch_thread_reads_the_same_batches_and_is_off_by_default_on_a_cpu(tmp_path):
    runs = {}
    for name, prefetch in (("auto", None), ("thread", True), ("inline", False)):
        args = toy.parse([str(tmp_path / name), "--steps", "6", "--ckpt-every", "100", "--gan"])
        task = toy.task_from_args(args)
        config = dataclasses.replace(toy.config_from_args(args), prefetch=prefetch)
        threads = []
        get_batch = task.get_batch
        task.get_batch = lambda *a, _g=get_batch, _t=threads, **k: (
            _t.append(threading.get_ident()) or _g(*a, **k)
        )
        runs[name] = (_weights(train(task, config).checkpoint), set(threads))
    main = threading.get_ident()
    assert runs["auto"][1] == {main} and runs["inline"][1] == {main}  # CPU: no thread
    assert runs["thread"][1] - {main}  # the forced prefetch read in its own thread
    for k, v in runs["inline"][0].items():
        assert torch.equal(v, runs["thread"][0][k]), k  # same batches, same weights


def test_each_optimizer_sees_only_its_own_loss(tmp_path):
    """Three GAN steps match a hand-written loop where each loss reaches only its own params."""
    steps = 3
    cfg = toy.make_config(
        str(tmp_path / "run"),
        steps=steps,
        global_batch=8,
        lr=1e-2,
        block=4,
        buffer_blocks=2,
        ckpt_every=100,
        cpu=True,
    )
    task = toy.ToyTask(gan=True, noise=0.0)
    result = train(task, cfg)

    ref = toy.ToyTask(gan=True, noise=0.0)
    torch.manual_seed(cfg.seed)
    mods = ref.build()
    opt_g = torch.optim.AdamW(mods["model"].parameters(), lr=1e-2, betas=cfg.betas, weight_decay=0)
    opt_d = torch.optim.AdamW(mods["disc"].parameters(), lr=5e-3, betas=(0.5, 0.9), weight_decay=0)
    sampler, pos = BlockSampler(64, cfg.seed, 4, 2), Position()
    for s in range(steps):
        idx, pos = sampler.take(pos, 8)
        out = ref.training_step(mods, ref.get_batch(idx, s, np.random.default_rng(0)), s)
        g_grads = torch.autograd.grad(out.losses["gen"], list(mods["model"].parameters()))
        d_grads = torch.autograd.grad(out.losses["disc"], list(mods["disc"].parameters()))
        for opt, grads in ((opt_g, g_grads), (opt_d, d_grads)):
            for p, g in zip(opt.param_groups[0]["params"], grads, strict=True):
                p.grad = g
            opt.step()
    got = _weights(result.checkpoint, ("model", "disc"))
    for name in ("model", "disc"):
        for k, v in mods[name].state_dict().items():
            torch.testing.assert_close(got[f"{name}.{k}"], v, rtol=0, atol=1e-6)


def test_nan_guard_skips_and_counts_then_raises(tmp_path):
    cfg = toy.make_config(
        str(tmp_path / "skip"), steps=12, global_batch=8, lr=1e-2, ckpt_every=4, cpu=True
    )
    result = train(toy.ToyTask(nan_steps=frozenset({2, 3, 6})), cfg)
    assert result.step == 12 and result.bad_steps == 3
    # save policy: the checkpoints at 4 and 8 follow non-finite steps and are skipped
    saved = sorted(p.name for p in (tmp_path / "skip" / "checkpoints").iterdir())
    assert saved == ["step-0000012"]
    w = _weights(result.checkpoint, ("model", "ema"))
    assert all(torch.isfinite(v).all() for v in w.values())
    assert read_state(result.checkpoint)["bad_steps_total"] == 3
    assert read_state(result.checkpoint)["ema_updates"] == 9  # only good steps move the EMA

    cfg = toy.make_config(
        str(tmp_path / "dies"),
        steps=20,
        global_batch=8,
        ckpt_every=2,
        max_nonfinite_steps=3,
        cpu=True,
    )
    with pytest.raises(TrainingError) as e:
        train(toy.ToyTask(nan_steps=frozenset(range(5, 20))), cfg)
    assert "learning rate" in e.value.hint
    last = latest_checkpoint(cfg.run_dir)
    # steps 5, 6, 7 failed; the save at 6 follows the bad step 5 and is skipped: 4 is the last
    assert read_state(last)["step"] == 4
    assert str(last) in e.value.message
    assert all(torch.isfinite(v).all() for v in _weights(last, ("model", "ema")).values())


def test_checkpoints_are_atomic_pruned_and_safe_to_load(tmp_path):
    run = tmp_path / "run"
    argv = ["--steps", "10", "--ckpt-every", "2", "--keep-last", "2", "--image-every", "4"]
    task, result = _run_toy([str(run), *argv])
    ckdir = run / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-0000008", "step-0000010"]
    assert result.checkpoint == ckdir / "step-0000010" == latest_checkpoint(run)
    optim = torch.load(ckdir / "step-0000010" / "optim.pt", weights_only=True)
    assert set(optim["optimizers"]) == {"gen"} and "schedulers" in optim
    assert load_optim(ckdir / "step-0000010")["schedulers"]["gen"]["last_epoch"] == 10
    state = read_state(result.checkpoint)
    assert state["step"] == 10 and TrainConfig.from_dict(state["config"]).steps == 10
    assert json.loads((run / "config.json").read_text())["steps"] == 10
    assert (run / "curves.png").stat().st_size > 0 and any((run / "tb").iterdir())
    assert sorted(p.name for p in (run / "images").iterdir()) == [
        "step-0000004.png",
        "step-0000008.png",
        "step-0000010.png",  # every run ends with a picture, whatever image_every
    ]
    assert state["extra"] == {"target_mean": float(task.y.mean()), "cache_id": "toy-v1"}
    records = read_metrics(run)
    assert [r["step"] for r in records] == [5, 10] and "loss/gen" in records[0]
    # sampling code gets a state dict that loads into a fresh model
    fresh = toy.ToyTask().build()["model"]
    fresh.load_state_dict(load_model_weights(result.checkpoint, "ema"))
    assert not torch.equal(fresh[0].weight, task.modules["model"][0].weight)  # EMA, not raw
    with pytest.raises(CheckpointError):
        load_model_weights(result.checkpoint, "best")

    # things resume must never pick: a temp folder, missing files, a step that disagrees
    src = ckdir / "step-0000010"
    shutil.copytree(src, ckdir / ".tmp-step-0000012-999")
    shutil.copytree(src, ckdir / "step-0000014")
    (ckdir / "step-0000014" / "optim.pt").unlink()
    shutil.copytree(src, ckdir / "step-0000016")  # state.json still says 10
    shutil.copytree(src, ckdir / "step-18")
    assert latest_checkpoint(run) == src
    # a run with more steps resumes from it (and clears the temporary folder)
    task, more = _run_toy([str(run), "--steps", "12", "--ckpt-every", "100", "--keep-last", "0"])
    assert more.resumed_from == 10 and more.step == 12
    assert task.loaded_extra == state["extra"]
    assert not (ckdir / ".tmp-step-0000012-999").exists()
    assert latest_checkpoint(run) == ckdir / "step-0000012"


def test_resume_applies_a_new_lr_but_refuses_another_sample_order(tmp_path):
    cfg = toy.make_config(
        str(tmp_path / "run"),
        steps=2,
        global_batch=8,
        lr=1e-2,
        ckpt_every=2,
        log_every=1,
        block=4,
        cpu=True,
    )
    train(toy.ToyTask(), cfg)
    # lowering the lr after trouble (the NaN hint) must take effect, not the checkpoint's lr
    more = train(toy.ToyTask(), dataclasses.replace(cfg, steps=4, lr=1e-3))
    assert more.resumed_from == 2
    lrs = [r["lr/gen"] for r in read_metrics(cfg.run_dir)]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    with pytest.raises(CheckpointError, match="block"):
        train(toy.ToyTask(), dataclasses.replace(cfg, steps=6, block=8))


def test_a_run_started_with_the_default_adamw_loop_resumes_with_it(tmp_path, monkeypatch):
    """Optimizers are now PyTorch's fused AdamW (``make_adamw``). A run started before, with
    the default loop, resumes with that loop (its optimizer state says so) and ends
    bit-identical to a run that never changed; a new run is fused, and differs from the loop
    by float rounding only."""
    import repackctl.train.trainer as trainer_module

    def cfg(name: str, steps: int) -> TrainConfig:
        return toy.make_config(str(tmp_path / name), steps=steps, global_batch=8, lr=1e-2,
                               ckpt_every=4, cpu=True)  # fmt: skip

    def loop_adamw(params, lr, betas, weight_decay):  # what every run used before
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def fused_flag(result) -> object:
        return load_optim(result.checkpoint)["optimizers"]["gen"]["param_groups"][0]["fused"]

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "make_adamw", loop_adamw)
        before = train(toy.ToyTask(), cfg("before", 8))
        train(toy.ToyTask(), cfg("upgraded", 4))
    upgraded = train(toy.ToyTask(), cfg("upgraded", 8))  # resumed by this version
    assert upgraded.resumed_from == 4 and fused_flag(upgraded) is None
    a, b = (
        _weights(before.checkpoint, ("model", "ema")),
        _weights(upgraded.checkpoint, ("model", "ema")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)

    new = train(toy.ToyTask(), cfg("new", 8))
    assert fused_flag(new) is True
    c = _weights(new.checkpoint, ("model", "ema"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another kernel …
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=1e-5)  # … the same update


class _RecordingProgress:
    """A progress factory that remembers what the loop reported."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.advanced = 0
        self.fields: list[dict] = []

    def __call__(self, description="", total=None, completed=0, unit="it"):
        self.calls.append({"description": description, "total": total, "completed": completed})
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def advance(self, n=1, **fields):
        self.advanced += n
        if fields:
            self.fields.append(fields)

    def log(self, message):
        pass


def test_bf16_run_reports_progress(tmp_path):
    cfg = toy.make_config(
        str(tmp_path / "bf16"),
        steps=4,
        global_batch=8,
        log_every=2,
        ckpt_every=100,
        precision="bf16",
        cpu=True,
    )
    bar = _RecordingProgress()
    result = train(toy.ToyTask(gan=True), cfg, progress=bar)
    assert bar.calls == [{"description": "train", "total": 4, "completed": 0}]
    assert bar.advanced == 4 and len(bar.fields) == 2
    assert {"loss/gen", "loss/disc", "steps/s"} <= set(bar.fields[-1])
    w = load_model_weights(result.checkpoint, "model")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    run = tmp_path / "killed"
    argv = ["--steps", "30", "--ckpt-every", "10", "--keep-last", "3", "--gan"]
    cmd = [sys.executable, str(SCRIPT), str(run), *argv, "--sleep", "0.1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while latest_checkpoint(run) is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert still_running
    killed_at = read_state(latest_checkpoint(run))["step"]
    assert killed_at < 30

    # the pacing sleep does not change any number; the restart runs at full speed, in this
    # process (one thread, as the killed one): the kill is the real process, the restart only
    # reads what it left
    _, done = _run_toy([str(run), *argv])
    assert {"step": done.step, "resumed_from": done.resumed_from} == {
        "step": 30,
        "resumed_from": killed_at,
    }

    _, straight = _run_toy([str(tmp_path / "straight"), *argv])
    a, b = _weights(latest_checkpoint(run)), _weights(straight.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # no step logged twice


def _two(argv: list[str]) -> Job:
    return start_two([str(SCRIPT), *argv], _env())


def _finish(*jobs: Job) -> None:
    for job in jobs:
        code, _, err = job.wait(timeout=180)
        assert code == 0, err[-3000:]


def _close(a: Path, b: Path) -> None:
    """Weights, EMA and optimizer state of two checkpoints agree to float rounding."""
    wa, wb = _weights(a, ("model", "ema", "disc")), _weights(b, ("model", "ema", "disc"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    oa, ob = load_optim(a)["optimizers"], load_optim(b)["optimizers"]
    for name in ("gen", "disc"):
        sa, sb = oa[name]["state"], ob[name]["state"]
        assert sa.keys() == sb.keys() and sa
        for i in sa:
            for k in sa[i]:
                torch.testing.assert_close(sb[i][k], sa[i][k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_fsdp_gan_matches_ddp_and_checkpoints_resume_across_modes(tmp_path):
    """FSDP2 (every module sharded, the EMA too) against DDP, both 2 processes x 2 micro-batches,
    with the GAN's two optimizers, clipping and the images hook, and DDP against one process x 4
    micro-batches (equal replicas, one RNG state per process, rank 0 saves what it trained); then
    each run resumes in the other mode. Not bit-identical (FSDP reduce-scatters each micro-batch of a two-loss step and
    clips with a norm summed over shards): equal to float rounding (observed <= 3e-8)."""
    argv = ["--steps", "8", "--ckpt-every", "4", "--noise", "0", "--gan", "--grad-accum", "2"]
    argv += ["--image-every", "4"]
    ddp, fsdp, ddp_dump = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "ddp-dump"
    _finish(
        _two([str(ddp), *argv, "--dump", str(ddp_dump)]),
        _two([str(fsdp), *argv, "--parallel", "fsdp", "--dump", str(tmp_path)]),
    )
    header = json.loads((fsdp / "header.json").read_text())
    assert header["fsdp_modules"] == ["model", "disc"] and header["ddp_modules"] == []
    assert (fsdp / "images" / "step-0000008.png").is_file()
    _close(latest_checkpoint(ddp), latest_checkpoint(fsdp))

    # DDP with ``no_sync`` on all but the last micro-batch: 2 x 2 micro-batches = 1 x 4
    header = json.loads((ddp / "header.json").read_text())
    assert header["world_size"] == 2 and header["ddp_modules"] == ["model"]
    state = read_state(latest_checkpoint(ddp))
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # one RNG state per process
    d0, d1 = load_weights(ddp_dump, "rank0"), load_weights(ddp_dump, "rank1")
    assert all(torch.equal(d0[k], d1[k]) for k in d0)  # DDP keeps the replicas equal
    _, single = _run_toy([str(tmp_path / "one"), *argv[:-3], "4", *argv[-2:]])
    two = _weights(latest_checkpoint(ddp), ("model", "disc"))
    one = _weights(single.checkpoint, ("model", "disc"))
    torch.manual_seed(0)  # the trainer builds right after seeding with config.seed
    start = toy.ToyTask(gan=True).build()["model"].state_dict()
    assert not torch.allclose(two["model.0.weight"], start["0.weight"])  # it did train
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6)
        assert torch.equal(two[k], d0[k])  # rank 0 saved what it trained
    r0, r1 = load_weights(tmp_path, "rank0"), load_weights(tmp_path, "rank1")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # gathered shards: the same everywhere

    # crossed resume: the DDP checkpoint goes on sharded, the FSDP one replicated
    argv[1] = "12"
    _finish(
        _two([str(ddp), *argv, "--parallel", "fsdp"]),
        _two([str(fsdp), *argv]),
    )
    a, b = latest_checkpoint(ddp), latest_checkpoint(fsdp)
    assert a.name == b.name == "step-0000012"
    _close(a, b)


# --------------------------------------------------------------------------- engine policies


@pytest.mark.slow
def test_exploding_lr_stops_keeps_good_checkpoints_and_resumes(tmp_path):
    """Save policy: a diverging run stops with an error and leaves only finite checkpoints."""
    run = tmp_path / "boom"
    argv = [str(run), "--ckpt-every", "2", "--noise", "0"]
    _run_toy([*argv, "--steps", "4"])  # good checkpoints at 2 and 4
    drawn = (run / "curves.png").stat().st_mtime_ns

    # in this process too (what a process would print is the error's text, asserted here)
    with pytest.raises(TrainingError) as boom:
        _run_toy([*argv, "--steps", "20", "--lr", "1e30", "--max-nonfinite-steps", "3"])
    assert "non-finite" in str(boom.value)
    assert (run / "curves.png").stat().st_mtime_ns > drawn  # a failed run ends with its curves
    left = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in left] == ["step-0000002", "step-0000004"]  # the skipped 6 is absent
    for ckpt in left:
        assert all(torch.isfinite(v).all() for v in _weights(ckpt, ("model", "ema")).values())
        assert _weights(ckpt, ("model",))["model.0.weight"].abs().max() < 100  # not the 1e30 ones

    _, again = _run_toy([*argv, "--steps", "8"])  # the diverged run left nothing to trip on
    assert (again.step, again.resumed_from) == (8, 4)


def test_precision_precedence_and_run_header(tmp_path, monkeypatch):
    """flag > repackctl config/env > launcher (ACCELERATE_MIXED_PRECISION) > default."""
    from repackctl.runtime import resolve_precision
    from repackctl.settings import resolve_settings

    launcher = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    assert resolve_precision("fp32", "default", launcher) == ("bf16", "launcher")
    assert resolve_precision("fp32", "flag", launcher) == ("fp32", "flag")
    assert resolve_precision("fp16", "env", launcher) == ("fp16", "env")
    assert resolve_precision("fp32", "default", {}) == ("fp32", "default")

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    for flag, want, source in ((None, "bf16", "launcher"), ("fp32", "fp32", "flag")):
        flags = {"device": "cpu"} | ({"precision": flag} if flag else {})
        resolved = resolve_settings(flags=flags)
        s = resolved.settings
        built = toy.TrainConfig.from_settings(
            s, s.dit, tmp_path / want, sources=resolved.to_dict()["sources"]
        )
        assert (built.precision, built.precision_source, built.cpu) == (want, source, True)
        cfg = toy.config_from_args(toy.parse([str(tmp_path / want), "--steps", "2"]))
        cfg = dataclasses.replace(cfg, precision=want, precision_source=source)
        result = train(toy.ToyTask(), cfg)  # bf16 autocast runs on the CPU
        header = json.loads((result.run_dir / "header.json").read_text())
        assert header["precision"] == want and header["precision_source"] == source
        assert header["world_size"] == 1 and header["device"] == "cpu" and header["seed"] == 0
        assert header["repackctl"]


def test_train_config_from_settings_maps_same_named_fields(tmp_path):
    """One mapping per stage: every same-named setting reaches the engine unchanged."""
    from repackctl.settings import resolve_settings

    flags = {"dit.lr": 3e-4, "dit.max_nonfinite_steps": 4, "dit.keep_last": 7, "seed": 5}
    s = resolve_settings(flags=flags).settings
    cfg = toy.TrainConfig.from_settings(s, s.dit, tmp_path / "r", sources={})
    assert (cfg.lr, cfg.max_nonfinite_steps, cfg.keep_last, cfg.seed) == (3e-4, 4, 7, 5)
    assert cfg.betas == (s.dit.beta1, s.dit.beta2)
    assert cfg.ema_warmup is s.dit.ema_warmup and cfg.image_every == s.dit.image_every
    with pytest.raises(TypeError):
        toy.TrainConfig(run_dir="r", steps=1)  # no hidden defaults for settings' fields


@pytest.mark.slow
def test_benchmark_times_the_trainers_own_step(tmp_path):
    """`benchmark train` builds the `train dit` task + Trainer and reports what was really on."""
    from repackctl.bench import run_benchmark
    from repackctl.bench.common import BenchContext

    ctx = BenchContext(size="tiny", warmup=0, repeats=1, compile=True, min_sample_s=0.0)
    result = run_benchmark("train", ctx).to_dict()
    p = result["params"]
    assert p["repa"] is True and p["repa_weight"] > 0 and p["time_dist"] == "logit_normal"
    assert p["compile"] is False and p["compiled_blocks"] == 0  # asked for, but not on a CPU
    assert p["precision"] == "fp32"
    rows = {r["case"]: r for r in result["rows"]}
    step = next(r for c, r in rows.items() if "Trainer.step" in c)
    assert step["extra"]["step_tflop"] > 0 and "overhead" in step["extra"]
    assert any(c.startswith("bare step") for c in rows)
