"""`refine train`'s random flips do not depend on how the global batch is split.

The loop hands ``get_batch`` one generator per micro-batch, keyed by the micro-batch's offset in
the global batch (``train.trainer.batch_generator``). The refiner drew the flip slots of a whole
micro-batch from it, so a sample got another flip with 2 processes (or 2 micro-batches) than
with 1, and 2 processes trained other weights than 1. Each sample's flip now comes from its own
generator of (seed, step, sample), as in the pack stage (``data.cached.sample_generators``).

- every split of one global batch (processes × micro-batches, through the loop's own
  ``local_micro_batches`` and ``batch_generator``) reads the same images, reconstructions and
  latents, with both flips among them (in-process, the shared toy stack: patchpix, 32 px);
- two real processes with torchrun's environment (``support.launch.start_two``, CPU, gloo) train
  the refiner's, its EMA's and its GroupNorm discriminator's weights of one process, to float
  rounding (the order of the gradient sums differs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from support.launch import start_two
from support.stack import shared_stack, tiny_refine_task
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry
from repackctl.cli.app import app
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets
from repackctl.train.checkpoint import latest_checkpoint, load_weights, read_state

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
# flips on (the default), the GAN on with the small preset's GroupNorm discriminator; lr 1e-3 so
# that one other flip moves the weights far past the rounding tolerance
TRAIN = ["refine", "train", "--pack-run", "pack-tiny", "--steps", "2", "--batch-size", "8"]
TRAIN += ["--base-channels", "8", "--disc-channels", "8", "--gan-weight", "0.5", "--flip"]
TRAIN += ["--lr", "1e-3", "--ckpt-every", "2", "--log-every", "1", "--device", "cpu"]
TRAIN += ["--seed", "7"]  # keys the flips (and the sampler's order, the init)

# every process runs `refine train` through the CLI, as `python -m repackctl` would
WORKER = """
import sys
import torch
from repackctl.cli.app import app

torch.set_num_threads(1)
app(sys.argv[1:], prog_name="repackctl")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """The shared toy stack (16 images, pack ``pack-tiny``) with its triplets built."""
    paths = shared_stack(tmp_path_factory)
    pack = load_pack("pack-tiny", runs=paths["runs"])
    entry = DatasetEntry.open(paths["cache"], pack.extra["cache"]["entry"])
    build_triplets(entry, pack.extra["cache"]["features"], pack)
    return paths


def _split_batch(task, global_indices: np.ndarray, step: int, world: int, accum: int) -> dict:
    """The global batch as ``world`` processes × ``accum`` micro-batches read it (the loop's
    ``Trainer._load``), concatenated in global order."""
    from repackctl.train.sampler import local_reads
    from repackctl.train.trainer import batch_generator

    size = len(global_indices) // (world * accum)
    parts = []
    for rank in range(world):
        for i, (idx, repeats) in enumerate(local_reads(global_indices, rank, world, accum)):
            gen = batch_generator(0, step, (rank * accum + i) * size)  # the task's seed
            parts.append(task.get_batch(idx, step, gen, repeats=repeats))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def test_every_split_of_a_global_batch_reads_the_same_flips(stack) -> None:
    task, entry = tiny_refine_task(stack)
    rows = np.asarray(task.positions)
    global_indices = np.random.default_rng(0).permutation(len(rows))[:8]  # a batch of 8
    # a batch that straddles two epochs reads a sample twice: here in two micro-batches
    global_indices[6] = global_indices[1]
    images = torch.from_numpy(np.asarray(entry.images[:]))[rows[global_indices]]  # (8, R, R, 3)
    as_stored = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (8, 3, R, R) in [-1, 1]
    both_reads_alike = []  # per step: the repeated sample's two reads got the same flip
    for step in range(6):
        one = _split_batch(task, global_indices, step, 1, 1)
        both_reads_alike.append(torch.equal(one["gt"][1], one["gt"][6]))
        stored = (one["gt"] == as_stored).flatten(1).all(1)  # (8,)
        mirrored = (one["gt"] == as_stored.flip(-1)).flatten(1).all(1)  # (8,)
        assert bool((stored | mirrored).all()), step  # each real image, as stored or mirrored
        assert stored.any() and mirrored.any(), step  # both flips drawn: flips are exercised
        for world, accum in ((2, 1), (1, 2), (2, 2), (4, 2)):
            split = _split_batch(task, global_indices, step, world, accum)
            for key in ("gt", "rec", "z"):
                assert torch.equal(split[key], one[key]), (step, world, accum, key)
    assert not all(both_reads_alike)  # the two reads draw apart: the repeat keys the draw


def _same_weights(a: Path, b: Path) -> None:
    """The checkpoints hold the same refiner, EMA and discriminator weights up to rounding, and
    their refiners refine the same images.

    Sums over 8 samples and over 2 × 4 round differently, and Adam, which divides a gradient by
    its own size, makes that visible where a gradient is as small as its ``eps`` (1e-8): the
    attention keys' bias has no true gradient (the softmax does not change when every key moves
    by the same vector), so Adam steps on rounding noise alone there; it is left out of the
    weights (as in tests/pack/test_pack_distributed.py) and changes no output."""
    from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig

    config = RefinerConfig.from_dict(read_state(a)["extra"]["refiner_config"])
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1  # (B, 3, R, R) in [-1, 1]
    latents = torch.randn(4, 4, 4, 4, generator=gen)  # (B, d, h, w)
    for name in ("model", "ema", "disc"):
        wa, wb = load_weights(a, name), load_weights(b, name)
        assert wa.keys() == wb.keys(), name
        for k in wa:
            keep = torch.ones_like(wa[k], dtype=torch.bool)
            if k.endswith("qkv.bias"):  # (q, k, v) biases: the keys' third is left out
                keep[wa[k].numel() // 3 : 2 * wa[k].numel() // 3] = False
            torch.testing.assert_close(
                wb[k][keep], wa[k][keep], rtol=1e-4, atol=1e-5, msg=f"{name} {k}"
            )
        if name == "disc":
            continue
        out = []
        for w in (wa, wb):
            net = LatentGuidedRefiner(config)
            net.load_state_dict(w)
            with torch.no_grad():
                out.append(net.eval()(images, latents))  # (B, 3, R, R)
        torch.testing.assert_close(out[1], out[0], rtol=0, atol=2e-5, msg=name)
        assert (out[0] - images).abs().mean() > 0.01, name  # the refiner changes the images


@pytest.mark.slow
def test_two_processes_train_the_one_process_refiner(stack, tmp_path) -> None:
    for name in ("cache", "runs"):  # a private copy: the runs land in it
        shutil.copytree(stack[name], tmp_path / name)
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    # the workers import the repackctl of this checkout, whatever the venv's install points to
    env = subprocess_env(tmp_path, PYTHONPATH=str(REPO))
    script = tmp_path / "refine_worker.py"
    script.write_text(WORKER)
    job = start_two([str(script), *TRAIN, "--name", "two", *roots], env)
    try:  # meanwhile the 1-process run, in this process (one thread, as the workers)
        with one_torch_thread():
            res = runner.invoke(app, [*TRAIN, "--name", "one", *roots])
        assert res.exit_code == 0, res.output
    finally:
        code, out, err = job.wait(timeout=240)
    assert code == 0 and "Traceback" not in out + err, err[-3000:]
    one, two = (latest_checkpoint(tmp_path / "runs" / n) for n in ("one", "two"))
    assert one is not None and two is not None and one.name == two.name == "step-0000002"
    assert read_state(two)["world_size"] == 2 and read_state(one)["world_size"] == 1
    logs = (tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()
    assert any('"loss/disc"' in line for line in logs), logs  # the discriminator did train
    assert json.loads(logs[-1])["step"] >= 1
    _same_weights(one, two)
