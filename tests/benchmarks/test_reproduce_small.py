"""`benchmarks/reproduce_small.py --smoke`: every stage of the reproduction at a toy size, run as a
user runs it (a real subprocess), plus the pixel arm's exact space-to-depth latents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env

from repackctl.cache.store import DatasetEntry
from repackctl.pack.pixels import decode_pixels, depth_to_space, images_to_model, space_to_depth

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_small.py"
ARMS = ("RePack", "PCA", "pixels", "RePack + REPA")
VERDICTS = {"holds", "partly holds", "does not hold"}


def test_space_to_depth_is_exact() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z = space_to_depth(images_to_model(images), 8)  # (3, 192, 4, 4)
    assert z.shape == (3, 192, 4, 4)
    # one grid cell holds exactly the pixels of its 8×8 patch
    patch = images_to_model(images)[1, :, 8:16, 16:24].reshape(3, 64)
    assert torch.equal(z[1, :, 1, 2].reshape(3, 64), patch)
    assert torch.equal(depth_to_space(z, 8), images_to_model(images))
    assert np.array_equal(decode_pixels(z, 8), images)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reproduce")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--quiet", "--out", str(out)],
        env=subprocess_env(out),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_smoke_run_scores_every_arm_and_claim(smoke_run: Path) -> None:
    res = json.loads((smoke_run / "results.json").read_text())
    steps = res["plan"]["checkpoints"]
    assert steps == [2, 4]
    for arm in ARMS:  # equal compute: every arm scored at the same checkpoints
        fds = res["fd"][arm]
        assert sorted(int(k) for k in fds) == steps
        assert all(np.isfinite(v) and v > 0 for v in fds.values())
        run = Path(res["dit"][arm]["run"])
        assert (run / "checkpoints" / "step-0000004" / "ema.safetensors").is_file()
    assert res["dit"]["pixels"]["latent_shape"] == [192, 4, 4]
    assert res["dit"]["RePack"]["latent_shape"][1:] == [4, 4]
    floors = res["floors"]
    assert floors["pixels"] == floors["real images"] < floors["RePack"]
    rec = res["refiner"]["recon_val"]
    assert all(np.isfinite(rec[k]["psnr"]) for k in ("decoded", "refined"))
    assert [r["dims"] for r in res["probe"]["rows"]] == [96, 8, 8]
    claims = [v[0] for v in res["verdicts"]]
    assert len(claims) == 4 and {v[1] for v in res["verdicts"]} <= VERDICTS

    md = (smoke_run / "reproduce_small.md").read_text()
    assert "## Verdicts" in md and "![figures](reproduce_small.png)" in md
    assert all(c in md for c in claims) and "| pixels |" in md
    png = (smoke_run / "reproduce_small.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_pixel_latents_in_cache_have_exact_stats(smoke_run: Path) -> None:
    res = json.loads((smoke_run / "results.json").read_text())
    cache = str(smoke_run / "cache")
    entry = DatasetEntry.open(cache, res["entries"]["train"])
    grp = entry.latents(res["latents"]["pixels"])
    mean = grp["mean"][:]  # (N, 2, 192, 4, 4) float16
    images = images_to_model(np.asarray(entry.images[:]))  # (N, 3, 32, 32)
    assert np.array_equal(mean[:, 0], space_to_depth(images, 8).half().numpy())
    assert np.array_equal(mean[:, 1], space_to_depth(images.flip(-1), 8).half().numpy())
    z = mean.astype(np.float64)
    stats = grp.attrs["stats"]
    np.testing.assert_allclose(stats["mean"], z.mean(axis=(0, 1, 3, 4)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["std"], z.std(axis=(0, 1, 3, 4)), rtol=1e-8)


def test_bad_checkpoints_flag_is_a_user_error(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--steps", "10", "--checkpoints", "5,20"],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Error:" in proc.stderr and "Hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started
