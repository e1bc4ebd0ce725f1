"""A tiny task for the training loop: MLP regression plus a small discriminator (two optimizers).

Imported by ``tests/train/test_train.py`` (in-process runs) and run as a script by the subprocess tests
(kill/resume, ``torchrun --standalone --nproc_per_node 2``):

    python tests/support/train_toy_script.py RUN_DIR --steps 40 --global-batch 8 [--gan] [--dump DIR]

Prints one JSON line with the result; ``--dump`` writes each process's final weights to
``DIR/rank<r>.safetensors`` so the test can compare processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from repackctl.train import OptimizerSpec, StepOutput, TrainConfig, train
from repackctl.train.sharding import full


class ToyTask:
    """y = sin(x @ w) regression on 64 fixed samples; optional hinge-GAN critic on (x, y) pairs."""

    def __init__(
        self,
        gan: bool = False,
        noise: float = 0.1,
        nan_steps: frozenset[int] = frozenset(),
        sleep: float = 0.0,
        n: int = 64,
    ) -> None:
        rng = np.random.default_rng(1234)
        self.x = rng.standard_normal((n, 8)).astype(np.float32)  # (N, 8)
        w = rng.standard_normal((8, 1)).astype(np.float32)
        self.y = np.sin(self.x @ w)  # (N, 1)
        self.gan = gan
        self.noise = noise
        self.nan_steps = nan_steps
        self.sleep = sleep
        self.seen: list[int] = []

    def build(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "model": nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        }
        if self.gan:
            mods["disc"] = nn.Sequential(nn.Linear(9, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
        self.modules = mods  # kept so the script can dump what each process ended with
        return mods

    def optimizers(self) -> dict[str, OptimizerSpec]:
        specs = {"gen": OptimizerSpec(("model",))}
        if self.gan:
            specs["disc"] = OptimizerSpec(("disc",), lr=5e-3, betas=(0.5, 0.9), overlap=False)
        return specs

    def num_samples(self) -> int:
        return len(self.x)

    def get_batch(
        self, indices: np.ndarray, step: int, generator: np.random.Generator, repeats=None
    ):
        if self.sleep:
            time.sleep(self.sleep)  # paces the subprocess so the test can kill it mid-run
        self.seen.extend(int(i) for i in indices)
        # augmentation that uses the loop's per-step generator: a random scale of the target
        jitter = generator.standard_normal((len(indices), 1)).astype(np.float32)  # (b, 1)
        scale = 1.0 + (0.1 * self.noise) * jitter
        return {
            "x": torch.from_numpy(self.x[indices]),
            "y": torch.from_numpy(self.y[indices] * scale),
        }

    def on_images(self, modules, ema, step: int, run_dir: Path) -> None:
        """A 'grid' of EMA predictions on a fixed input grid, as a grey PNG."""
        from PIL import Image

        with torch.no_grad():
            grid = torch.linspace(-2, 2, 16)
            x = torch.zeros(16 * 16, 8)  # (256, 8)
            x[:, 0] = grid.repeat(16)
            x[:, 1] = grid.repeat_interleave(16)
            img = ema(x).reshape(16, 16).clamp(-1, 1)  # (16, 16)
        pixels = ((img + 1) * 127.5).round().to(torch.uint8).numpy()
        (run_dir / "images").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(run_dir / "images" / f"step-{step:07d}.png")

    def state_extra(self) -> dict:
        return {"target_mean": float(self.y.mean()), "cache_id": "toy-v1"}

    def load_state_extra(self, extra: dict) -> None:
        self.loaded_extra = extra

    def training_step(self, modules, batch, step):
        x, y = batch["x"], batch["y"]  # (b, 8), (b, 1)
        if self.noise:
            x = x + self.noise * torch.randn_like(x)  # global torch RNG: restored on resume
        pred = modules["model"](x)  # (b, 1)
        loss = torch.mean((pred - y) ** 2)
        if step in self.nan_steps:
            loss = loss * float("nan")
        logs = {"mse": float(loss.detach())}
        if not self.gan:
            return StepOutput({"gen": loss}, logs)
        disc = modules["disc"]
        g_adv = -disc(torch.cat([x, pred], 1)).mean()  # grads leak into disc: dropped by the loop
        real = disc(torch.cat([x, y], 1))  # (b, 1)
        fake = disc(torch.cat([x, pred.detach()], 1))  # (b, 1)
        d_loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        return StepOutput({"gen": loss + 0.1 * g_adv, "disc": d_loss}, logs)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--keep-last", type=int, default=2)
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--gan", action="store_true")
    ap.add_argument("--image-every", type=int, default=0)
    ap.add_argument("--dump", default=None)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--max-nonfinite-steps", type=int, default=10)
    ap.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    return ap.parse_args(argv)


# the values TrainConfig's required fields had as defaults before they became required
BASE = dict(
    steps=1000,
    global_batch=256,
    lr=2e-4,
    betas=(0.9, 0.95),
    ema_decay=0.9999,
    ema_warmup=False,
    precision="fp32",
    seed=0,
    ckpt_every=10_000,
    log_every=100,
    image_every=0,
    cpu=False,
)


def make_config(run_dir: str, **kw) -> TrainConfig:
    """A TrainConfig with test defaults for every required field."""
    return TrainConfig(run_dir=run_dir, **{**BASE, **kw})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return make_config(
        args.run_dir,
        steps=args.steps,
        global_batch=args.global_batch,
        grad_accum=args.grad_accum,
        lr=args.lr,
        schedule="cosine",
        warmup_steps=5,
        ema_decay=0.9,
        ckpt_every=args.ckpt_every,
        keep_last=args.keep_last,
        log_every=5,
        block=args.block,
        buffer_blocks=2,
        clip_grad=1.0,
        image_every=args.image_every,
        max_nonfinite_steps=args.max_nonfinite_steps,
        parallel=getattr(args, "parallel", "ddp"),
        cpu=True,
    )


def task_from_args(args: argparse.Namespace) -> ToyTask:
    return ToyTask(gan=args.gan, noise=args.noise, sleep=args.sleep)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    task = task_from_args(args)
    result = train(task, config_from_args(args))
    rank = int(os.environ.get("RANK", "0"))
    if args.dump:
        out = Path(args.dump)
        out.mkdir(parents=True, exist_ok=True)
        # the weights every process ended with (not only what rank 0 saved)
        state = {
            f"{name}.{k}": full(v).detach().clone()  # gathered from the shards under FSDP
            for name, mod in task.modules.items()
            for k, v in mod.state_dict().items()
        }
        save_file(state, str(out / f"rank{rank}.safetensors"))
    if rank == 0:
        print(json.dumps({"step": result.step, "resumed_from": result.resumed_from}), flush=True)


if __name__ == "__main__":
    main()
