"""`repackctl sample`: per-index seeds (batch size, processes), resume after a kill, ADM npz,
labels, guidance at scale 1, the official-convention wrapper and CLI errors.

The fixture stack is built through the real stages where they exist (extract → pack train) and a
DiT checkpoint in the contract format of ``repackctl.dit.run`` (random tiny weights; sampling
does not care whether the DiT was trained).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from support.kill import kill_after_pngs
from support.stack import LATENT, _images, _settings, guide_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.sample.generate import model_velocity
from repackctl.sample.plan import make_labels
from repackctl.sample.run import run_sample

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding: CPU kernels give ~1e-7 batch-shape differences in the latent,
    which can move a pixel across a rounding boundary (one level, very rarely)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_resumed_batch_is_recomputed_whole() -> None:
    """Half-written batches are regenerated with exactly the samples they had."""
    from repackctl.sample.folder import aligned_batches

    assert aligned_batches(range(0, 7), {4}, 3) == [[3, 4, 5]]
    assert aligned_batches(range(10, 17), {10, 16}, 3) == [[10, 11, 12], [16]]
    assert aligned_batches(range(0, 4), set(), 2) == []


def test_labels_balanced_random_and_given() -> None:
    labels = make_labels(100, 10, "balanced", seed=0)
    assert np.array_equal(np.bincount(labels), np.full(10, 10))
    assert np.all(np.diff(labels) >= 0)  # class order
    assert np.bincount(make_labels(7, 3, "balanced", 0)).tolist() == [3, 2, 2]
    r1, r2 = make_labels(50, 10, "random", 1), make_labels(50, 10, "random", 1)
    assert np.array_equal(r1, r2) and not np.array_equal(r1, make_labels(50, 10, "random", 2))
    assert make_labels(5, 10, "3,7", 0).tolist() == [3, 7, 3, 7, 3]
    with pytest.raises(ConfigError, match="outside"):
        make_labels(5, 10, "3,12", 0)


def test_batch_size_does_not_change_images_and_npz_layout(stack, tmp_path) -> None:
    a = run_sample(
        _settings(
            stack,
            run="dit-tiny",
            num=6,
            steps=4,
            sampler="sde",
            cfg=2.0,
            batch_size=3,
            out=str(tmp_path / "b3"),
        )
    )
    b = run_sample(
        _settings(
            stack,
            run="dit-tiny",
            num=6,
            steps=4,
            sampler="sde",
            cfg=2.0,
            batch_size=8,
            out=str(tmp_path / "b8"),
        )
    )
    ia, ib = _images(a.out_dir), _images(b.out_dir)
    assert ia.dtype == np.uint8 and ia.shape == (6, 32, 32, 3)
    assert_same_images(ia, ib)
    assert ia.std() > 5  # real images, not a constant
    la, lb = np.load(a.out_dir / "latents.npy"), np.load(b.out_dir / "latents.npy")
    assert la.shape == (6, *LATENT)
    np.testing.assert_allclose(la, lb, atol=1e-5)
    with np.load(a.out_dir / "samples.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        assert z["arr_1"].tolist() == make_labels(6, 10, "balanced", 3).tolist()
    assert sorted(p.name for p in a.out_dir.glob("*.png"))[:2] == ["000000.png", "000001.png"]
    assert (a.out_dir / "grid.png").is_file() and not (a.out_dir / "latents").exists()
    card = json.loads((a.out_dir / "protocol.json").read_text())
    assert card["sampler"] == "euler-maruyama-sde" and card["steps"] == 4
    assert card["nfe"] == 8  # CFG doubles every call in the default interval [0, 1]
    assert card["label_scheme"] == "balanced" and card["num_samples"] == 6
    assert card["checkpoint_sha256"] and card["latent_convention"] == "raw"
    # a different seed gives different images
    c = run_sample(
        _settings(
            stack, run="dit-tiny", num=2, steps=4, sampler="sde", cfg=2.0, out=str(tmp_path / "s4")
        ).model_copy(update={"seed": 4})
    )
    assert not np.array_equal(_images(c.out_dir), ia[:2])


def test_guidance_scale_one_equals_no_guidance(stack, tmp_path) -> None:
    plain = run_sample(_settings(stack, run="dit-tiny", num=4, steps=4, out=str(tmp_path / "p")))
    one = run_sample(
        _settings(
            stack,
            run="dit-tiny",
            num=4,
            steps=4,
            cfg=1.0,
            cfg_t_hi=0.7,
            cfg_channels=3,
            out=str(tmp_path / "one"),
        )
    )
    four = run_sample(
        _settings(stack, run="dit-tiny", num=4, steps=4, cfg=4.0, out=str(tmp_path / "four"))
    )
    assert np.array_equal(_images(plain.out_dir), _images(one.out_dir))
    assert plain.nfe == one.nfe == 4 and four.nfe == 8
    assert not np.array_equal(
        np.load(plain.out_dir / "latents.npy"), np.load(four.out_dir / "latents.npy")
    )


def test_guidance_variants_get_their_own_default_folders(stack) -> None:
    """CFG on all steps, in an interval and autoguidance at the same scale are three folders:
    before, the second one was refused ("holds samples made with other settings")."""

    def run(**flags):
        settings = _settings(stack, run="dit-tiny", num=2, steps=2, cfg=4.0, **flags)
        return run_sample(settings.model_copy(update={"seed": 11})).out_dir.name

    guide = guide_run(stack)
    names = [run(), run(cfg_t_hi=0.8), run(guide=guide, guide_checkpoint="step-0000005")]
    assert names == [
        "dit-tiny--step-0000005--euler-2--cfg4--seed11",
        "dit-tiny--step-0000005--euler-2--cfg4-t0-0.8--seed11",
        "dit-tiny--step-0000005--euler-2--cfg4--seed11--guide-dit-guide-step-0000005",
    ]


def test_official_convention_is_wrapped() -> None:
    from repackctl.models.variants import tiny

    torch.manual_seed(0)
    model = tiny(in_channels=4, input_size=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 1, 2])
    ours = model_velocity(model, {})
    theirs = model_velocity(model, {"velocity_convention": "official"})
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), model(x, t, y))
        torch.testing.assert_close(theirs(x, t, y), -model(x, 1 - t, y))


def _cli_args(
    stack: dict[str, str],
    out: Path,
    num: int,
    extra: tuple[str, ...] = (),
    steps: int = 3,
    batch: int = 2,
) -> list[str]:
    return [
        "sample",
        "-r",
        "dit-tiny",
        "-n",
        str(num),
        "--steps",
        str(steps),
        "--cfg",
        "2",
        "--batch-size",
        str(batch),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--runs",
        stack["runs"],
        "--out",
        str(out),
        *extra,
    ]


def _env(stack: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPACKCTL_")}
    env |= {
        "REPACKCTL_CACHE": stack["cache"],
        "REPACKCTL_RUNS": stack["runs"],
        "OMP_NUM_THREADS": "1",
        "REPACKCTL_NUM_WORKERS": "0",
    }
    return env


@pytest.mark.slow
def test_two_processes_and_resume_after_kill(stack, tmp_path) -> None:
    ref = CliRunner().invoke(app, _cli_args(stack, tmp_path / "ref", 8))
    assert ref.exit_code == 0, ref.output
    reference = _images(tmp_path / "ref")

    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "repackctl" / "__main__.py"),
            *_cli_args(stack, tmp_path / "two", 8),
        ],
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert_same_images(_images(tmp_path / "two"), reference)

    # a real kill (SIGKILL) in the middle of sampling, then the same command again; one image
    # per batch and more steps, so that the kill lands mid-run even on a quiet machine
    slow = {"steps": 60, "batch": 1}
    # the reference and both halves of the killed run in the same environment (1 thread):
    # CPU reductions round by thread count, so bit-identity is promised for equal settings
    cmd = [sys.executable, "-m", "repackctl"]
    with one_torch_thread():  # in-process, as the subprocesses run
        ref_slow = CliRunner().invoke(app, _cli_args(stack, tmp_path / "ref-slow", 8, **slow))
    assert ref_slow.exit_code == 0, ref_slow.output
    reference = _images(tmp_path / "ref-slow")
    out = tmp_path / "killed"
    kill_after_pngs(_cli_args(stack, out, 8, **slow), _env(stack), out, poll=0.05)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png")}
    assert 0 < len(before) < 8 and not (out / "samples.npz").exists()
    again = subprocess.run([*cmd, *_cli_args(stack, out, 8, **slow)], env=_env(stack),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png") if p.name in before} == before
    assert_same_images(_images(out), reference)
    # the guarantee: same batch size and process count → bit-identical, resume included
    assert np.array_equal(_images(out), reference)
    assert np.array_equal(np.load(out / "latents.npy"), np.load(tmp_path / "ref-slow" / "latents.npy"))  # fmt: skip
    # other settings into the same folder are refused
    clash = CliRunner().invoke(app, _cli_args(stack, out, 8, ("--labels", "random"), **slow))
    assert clash.exit_code != 0 and "other settings" in clash.output


def test_cli_errors_are_one_line(stack, tmp_path) -> None:
    r = CliRunner().invoke(app, ["sample", "-r", "nope", "--runs", stack["runs"]])
    assert r.exit_code != 0 and "Error:" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["sample", "--runs", stack["runs"], "--show-config"])
    assert r.exit_code == 0 and "sample.num" in r.output
