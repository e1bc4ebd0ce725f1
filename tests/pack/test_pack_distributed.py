"""`pack train` on two processes (multi-GPU stage 1) against one process.

Two real processes with torchrun's environment (``support.launch.start_two``, CPU, gloo) run
`pack train` for both methods, with and without the discriminator (its start inside the run),
on a real patchpix cache (32 px, a 4×4 token grid). Each process runs the four trainings through
the CLI in turn (one interpreter start instead of four). The repack run without discriminator
must train the weights one process trains (the posterior noise is drawn per sample, not per
process; only the order of float sums differs), and a 2-process checkpoint resumes on one
process and goes on as the 1-process run does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from support.launch import start_two
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.train.checkpoint import latest_checkpoint, load_weights, read_state

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SRC = ["--encoder", "patchpix", "--resolution", "32"]
# a tiny decoder (4×4 grid → 32 px, 8 channels, d = 4), a checkpoint every 2 steps, all kept
TINY = [*SRC, "-c", "4", "--ch", "8", "--batch-size", "8", "--log-every", "2"]
TINY += ["--image-every", "0", "--ckpt-every", "2", "--keep-last", "0"]
NO_GAN = ["--gan-weight", "0"]
GAN = ["--gan-weight", "0.5", "--gan-start", "1"]  # the discriminator trains from step 1 of 2
RUNS = {
    "repack": ["--method", "repack", *NO_GAN],
    "repack-gan": ["--method", "repack", *GAN],  # the small preset's GroupNorm discriminator
    "pca": ["--method", "pca", *NO_GAN],
    "pca-gan-bn": ["--method", "pca", *GAN, "--disc-norm", "batch"],
}

# every process runs each `pack train` through the CLI, as `python -m repackctl` would
WORKER = """
import json, sys
import torch
from repackctl.cli.app import app

torch.set_num_threads(1)
for argv in json.loads(sys.argv[1]):
    try:
        app(argv, prog_name="repackctl")
    except SystemExit as e:
        if e.code:
            raise
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A patchpix train entry of 32 images at 32 px (chunks of 8, shards of 16)."""
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    root = tmp_path_factory.mktemp("pack-dist") / "cache"
    flags = {"cache": str(root), "num_workers": 0, "extract.encoder": "patchpix"}
    flags |= {"extract.split": "train", "extract.num": 32, "extract.resolution": 32}
    flags |= {"extract.chunk": 8, "extract.shard": 16}
    run_extract(resolve_settings(None, flags, environ={}).settings)
    return root


def _train(name: str, *extra: str) -> str:
    res = runner.invoke(app, ["pack", "train", *TINY, "--name", name, *extra])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return res.output


def _key_bias(key: str, value: torch.Tensor) -> slice | None:
    """The attention keys' part of a fused ``qkv`` bias (its true gradient is zero: the softmax
    does not change when every key moves by the same vector), else None."""
    return slice(value.numel() // 3, 2 * value.numel() // 3) if key.endswith("qkv.bias") else None


def _same_training(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold the same weights up to float rounding, and their
    autoencoders reconstruct the same images.

    Sums over 8 samples or over 2 × 4 round differently, and Adam, which divides a gradient by
    its own size, makes that visible where a gradient is as small as its ``eps`` (1e-8): the
    weights agree to the DiT test's tolerance (1e-4 relative, 1e-5 absolute), except the keys'
    bias, whose true gradient is zero, so that Adam steps on rounding noise alone (up to a tenth
    of the lr); it does not change the attention, so the reconstructions agree to 2e-5 (1e-5
    held with PyTorch's default AdamW loop; the fused AdamW rounds the update otherwise, and one
    pixel of 24576 then differed by 1.02e-5)."""
    from repackctl.pack.autoencoder import PackAutoencoder

    models = []
    for name in ("model", "ema"):
        wa, wb = load_weights(a, name), load_weights(b, name)
        assert wa.keys() == wb.keys(), name
        for k in wa:
            keep = torch.ones_like(wa[k], dtype=torch.bool)
            if (part := _key_bias(k, wa[k])) is not None:
                keep[part] = False
            torch.testing.assert_close(
                wb[k][keep], wa[k][keep], rtol=1e-4, atol=1e-5, msg=f"{name} {k}"
            )
        config = read_state(a)["extra"]["autoencoder_config"]
        for w in (wa, wb):
            model = PackAutoencoder.from_dict(config)
            model.load_state_dict(w)
            models.append(model.eval())
    tokens = torch.randn(8, 16, 64, generator=torch.Generator().manual_seed(0))  # (B, T, C)
    with torch.no_grad():
        recon = [m(tokens, sample=False)[0] for m in models]  # (B, 3, 32, 32) each
    torch.testing.assert_close(recon[1], recon[0], rtol=0, atol=2e-5)  # model
    torch.testing.assert_close(recon[3], recon[2], rtol=0, atol=2e-5)  # EMA
    assert recon[0].abs().mean() > 0.01  # an image, not zeros


@pytest.mark.slow
def test_two_processes_train_the_one_process_weights_and_resume_on_one(
    cache, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    # the workers import the repackctl of this checkout (as this process does), whatever the
    # venv's editable install points to
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=str(cache), PYTHONPATH=str(REPO))
    argvs = [
        ["pack", "train", *TINY, "--steps", "2", "--name", f"{name}-two", *args]
        for name, args in RUNS.items()
    ]
    script = tmp_path / "pack_worker.py"
    script.write_text(WORKER)
    job = start_two([str(script), json.dumps(argvs)], env)
    try:  # meanwhile the 1-process reference, in this process (one thread, as the workers)
        with one_torch_thread():
            _train("repack-one", "--steps", "4", *RUNS["repack"])
    finally:
        code, out, err = job.wait(timeout=240)
    # (a) every run ends normally, on both processes, with no traceback
    assert code == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    for name in RUNS:
        ckpt = latest_checkpoint(runs / f"{name}-two")
        assert ckpt is not None and ckpt.name == "step-0000002", name
        state = read_state(ckpt)
        assert state["world_size"] == 2 and state["extra"]["method"] == name.split("-")[0]
        mods = {"model", "ema"} | ({"disc"} if "gan" in name else set())
        assert mods <= {p.name.split(".")[0] for p in ckpt.glob("*.safetensors")}, name
    for name in ("repack-gan", "pca-gan-bn"):  # the discriminator did train (from step 1)
        logs = (runs / f"{name}-two" / "metrics.jsonl").read_text()
        assert '"loss/disc"' in logs and '"loss/gan"' in logs, name

    # (b) two processes train the weights one process trains (repack, no discriminator)
    one = runs / "repack-one" / "checkpoints"
    _same_training(one / "step-0000002", runs / "repack-two" / "checkpoints" / "step-0000002")

    # (c) the 2-process checkpoints resume on one process; the repack run goes on as the
    # 1-process run did
    with one_torch_thread():
        for name in ("repack", "pca-gan-bn"):
            output = _train(f"{name}-two", "--steps", "4", *RUNS[name])
            assert "resuming a 2-process run on 1" in output and "(step 2)" in output, output
            ckpt = latest_checkpoint(runs / f"{name}-two")
            assert ckpt.name == "step-0000004" and read_state(ckpt)["world_size"] == 1
    _same_training(one / "step-0000004", runs / "repack-two" / "checkpoints" / "step-0000004")
