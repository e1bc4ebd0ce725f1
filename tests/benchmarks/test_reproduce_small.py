"""`benchmarks/reproduce_small.py --smoke`: every stage of the study at a toy size, run as a user
runs it (a real subprocess, with its pool of worker processes), plus the pixel arm's exact
space-to-depth latents and the seed statistics of the verdicts."""

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
ARMS = ("pixels", "pixels + REPA", "PCA", "PCA + REPA", "RePack", "RePack + REPA")
VERDICTS = {"holds", "partly holds", "does not hold", "does not hold (REPA worse)"}


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
    steps = [str(s) for s in res["plan"]["checkpoints"]]
    assert steps == ["2", "4"] and res["plan"]["seeds"] == 2
    for arm in ARMS:  # equal compute: every arm × seed scored at the same checkpoints
        assert list(res["fd"][arm]) == steps and list(res["acc"][arm]) == steps
        for s in steps:
            assert len(res["fd"][arm][s]) == 2 and all(v > 0 for v in res["fd"][arm][s])
            assert all(0.0 <= a <= 1.0 for a in res["acc"][arm][s])
        assert sorted(r["seed"] for r in res["dit"][arm]) == [0, 1]
        for r in res["dit"][arm]:
            assert (Path(r["run"]) / "checkpoints" / "step-0000004" / "ema.safetensors").is_file()
    repa_run = next(r for r in res["dit"]["pixels + REPA"] if r["seed"] == 0)["run"]
    state = json.loads((Path(repa_run) / "checkpoints" / "step-0000004" / "state.json").read_text())
    extra = state["extra"]
    assert extra["repa"]["depth"] == 1 and extra["repa"]["weight"] == 0.5
    assert extra["model_config"]["depth"] == 3 and extra["model_config"]["family"] == "sit"
    assert res["dit"]["pixels"][0]["latent_shape"] == [192, 4, 4]
    assert res["dit"]["RePack"][0]["latent_shape"][1:] == [4, 4]
    floors = res["floors"]
    assert floors["pixels"] == floors["real images"]
    # the judge: trained once, cached, its own file format
    judge = json.loads((smoke_run / "judge" / "judge.json").read_text())
    assert judge["recipe"]["steps"] == res["plan"]["judge_steps"] and "val_accuracy" in judge
    assert (smoke_run / "judge" / "judge.safetensors").is_file()
    rec = res["refiner"]["recon_val"]
    for k in ("decoded", "refined"):
        assert np.isfinite(rec[k]["psnr"]) and rec[k]["hf_error"] >= 0 and rec[k]["fd"] >= 0
    refine_cfg = json.loads(
        (smoke_run / "runs" / res["refiner"]["run"] / "config.json").read_text()
    )
    assert refine_cfg["extra"]["refine"]["feature_weight"] > 0  # the weights-free perceptual term
    assert [r["dims"] for r in res["probe"]["rows"]] == [96, 8, 8]
    claims = [v[0] for v in res["verdicts"]]
    assert len(claims) == 6 and {v[1] for v in res["verdicts"]} <= VERDICTS
    assert any("positive control" in c for c in claims)

    md = (smoke_run / "reproduce_small.md").read_text()
    assert "## Verdicts" in md and "![figures](reproduce_small.png)" in md
    assert all(c in md for c in claims) and "| pixels + REPA |" in md and " ± " in md
    png = (smoke_run / "reproduce_small.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow  # it needs the smoke run
def test_a_rerun_with_other_sizes_in_the_folder_is_refused(smoke_run, monkeypatch, capsys) -> None:
    """The study records its plan (plan.json); another in the same folder is refused before
    anything is written, naming what differs, where it would have mixed two plans' runs."""
    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_small import main

    recorded = json.loads((smoke_run / "plan.json").read_text())
    assert recorded["dit_steps"] == 4 and recorded["seed"] == 0 and "seeds" not in recorded
    before = {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*")}
    monkeypatch.setenv("REPACKCTL_CACHE", str(smoke_run / "cache"))
    code = main(["--smoke", "--quiet", "--steps", "6", "--out", str(smoke_run)])
    err = " ".join(capsys.readouterr().err.split())  # the console wraps at its width
    assert code == 2 and "another plan" in err and "dit_steps 4 → 6" in err and "Hint:" in err
    assert {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*")} == before
    # the README's promise: more seeds (or other processes) in the same folder are the same plan
    from dataclasses import replace

    from reproduce_small import Plan, build_parser, plan_record

    args = build_parser().parse_args(["--smoke"])
    more = replace(Plan.smoke(), seeds=5, jobs=1)
    assert plan_record(more, args) == plan_record(Plan.smoke(), args) == recorded


def test_paired_seed_comparison() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_small import compare

    assert compare([1.0, 2.0, 3.0], [2.0, 3.1, 3.9]) == "lower"  # every seed lower, steady gap
    assert compare([2.0, 3.1, 3.9], [1.0, 2.0, 3.0]) == "higher"
    assert compare([1.0, 2.0, 3.0], [1.5, 1.9, 3.5]) == "tie"  # one seed disagrees
    assert compare([1.0, 1.0, 1.0], [1.01, 3.0, 1.02]) == "tie"  # agree, but the gap is noise
    assert compare([0.0899], [0.0898]) == "tie"  # one seed: no spread to judge a gap by


@pytest.mark.slow  # it needs the smoke run (about 25 s): not for the edit loop
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


def test_bad_checkpoints_flag_is_a_user_error(tmp_path, monkeypatch, capsys) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_small import main

    monkeypatch.chdir(tmp_path)  # in-process: the script's exit code and stderr, no traceback
    code = main(["--smoke", "--steps", "10", "--checkpoints", "5,20"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Error:" in err and "Hint:" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started
    # an unknown device: refused before the folder (and its plan.json) is made
    assert main(["--smoke", "--device", "tpu", "--out", str(tmp_path / "study")]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
    # one seed: every gap "held" (its standard error read 0); a verdict needs two
    assert main(["--smoke", "--seeds", "1", "--out", str(tmp_path / "study")]) == 2
    assert "--seeds 1 must be ≥ 2" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_refiner_verdict_says_higher_when_the_error_rises() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_small import refiner_verdict

    def results(hf_refined: float) -> dict:
        rec = {"decoded": {"hf_error": 0.1, "fd": 1.0, "psnr": 15.0}}
        rec["refined"] = {"hf_error": hf_refined, "fd": 1.0, "psnr": 15.0}
        samples = {"decoded": {"fd": 5.0}, "refined": {"fd": 5.0}}
        return {"refiner": {"recon_val": rec, "samples": samples}}

    _, word, ev = refiner_verdict(results(0.105))
    assert word == "does not hold" and "error 5.0% higher" in ev
    _, word, ev = refiner_verdict(results(0.07))
    assert "error 30.0% lower" in ev and word != "does not hold"
