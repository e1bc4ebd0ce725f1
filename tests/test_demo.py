"""`repackctl demo --quick`: every stage, every file, reuse on a second run, --fresh."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from support.snapshot import assert_scored, snapshot
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.demo import DEMO_FILES, DemoPlan, run_dit_seed
from repackctl.errors import ConfigError
from repackctl.files import sha256_file
from repackctl.pipeline import MARKER, claim_folder, solo_threads

runner = CliRunner()
SEEDS = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_seeds.py"
READOUT = Path(__file__).resolve().parents[1] / "scripts" / "colour_readout.py"


@pytest.mark.slow
def test_demo_end_to_end_reuse_and_fresh(tmp_path, capsys):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("report.md", "samples.png", "recon.png", "curves.png", "metrics.json"):
        assert (out / name).is_file(), name
    for folder in ("cache", "pack", "dit", "refine", "samples"):
        assert (out / folder).is_dir(), folder
    report = (out / "report.md").read_text()
    assert "FD (built-in encoder space)" in report and "| total |" not in report  # bold total row
    assert "**total**" in report and "top-1" in report
    metrics = first = json.loads((out / "metrics.json").read_text())
    # metrics.json names what was scored, with the sha256 of the files as they are
    assert_scored(metrics["scored_plain"], "dit--")
    assert_scored(metrics["scored_refined"], "dit--")
    assert metrics["scored_plain"]["refiner"] is None
    refiner = metrics["scored_refined"]["refiner"]
    assert refiner["sha256"] == sha256_file(Path(refiner["checkpoint"]) / "ema.safetensors")
    assert "scored_pca" not in metrics  # no PCA arm was run
    for key in ("fd_plain", "fd_refined", "class_accuracy", "recon_ssim", "refined_ssim"):
        assert math.isfinite(metrics[key]), key
    for key in ("fd_real", "fd_decoder", "colour_plain", "colour_refined", "colour_real"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    assert 0 < metrics["colour_real"] < 2  # L1 of two normalised histograms, not identical sets
    assert metrics["recon_hf_error"] > 0 and metrics["refined_hf_error"] > 0
    assert metrics["hf_energy"]["real"] > 0
    # the row says which way the refiner moved the error (a rise once read "-0.2 % lower")
    rise = metrics["refined_hf_error"] > metrics["recon_hf_error"]
    row = next(r for r in report.splitlines() if r.startswith("| high-frequency error"))
    assert ("% higher)" if rise else "% lower)") in row and "(-" not in row
    # beside it what an image without detail would score, and which way the detail moved
    energy = metrics["hf_energy"]
    assert f"no detail at all {energy['real']:.4f}" in row, row
    assert f"detail energy {energy['recon']:.4f} → {energy['refined']:.4f}" in row, row
    assert 0.0 <= metrics["class_accuracy"] <= 1.0
    assert metrics["class_accuracy"] == metrics["class_accuracy_refined"]
    # how much the refiner changed the samples, so that "refined / plain" reads as one or two
    # measurements (the quick refiner's EMA barely moves: it may change no pixel at all)
    change = metrics["refiner_sample_change"]
    assert 0 <= change <= 255
    if change == 0:
        said = "left every pixel of the samples as it was"
    elif change < 0.01:  # never "0.00 / 255": its own digits and the pixels it touched
        said = f"({change:.2g} / 255; {metrics['refiner_changed_pixels']} of "
        said += f"{metrics['refiner_pixels']} pixels changed"
    else:
        said = f"{change:.2f} / 255"
    assert said in " ".join(report.split()), said
    assert "by 0.00 / 255" not in report
    assert 0.0 <= metrics["class_accuracy_decoded_val"] <= 1.0
    assert "decoded val images" in report  # the ceiling a perfect DiT could reach
    # each ceiling names the set it was scored on (all val images; the first n_recon decoded)
    n_ref, n_rec = metrics["n_reference"], metrics["n_recon"]
    assert f"on the {n_ref} real val images is the ceiling" in " ".join(report.split())
    assert f"on the first {n_rec} val images through the packing" in " ".join(report.split())
    assert metrics["n_samples"] == 20
    # the run times come with the machine they were measured on
    machine = metrics["machine"]
    assert machine["cpu"] and machine["matmul_gflops_1_thread"] > 0
    assert machine["cpu"] in report and "speed index" in report
    # the DiT ran the plan's recipe (warm-up to the plan's lr, its batch, REPA's projector width)
    train = json.loads((out / "dit" / "config.json").read_text())["extra"]["train"]
    plan = DemoPlan.quick(out)
    assert (train["schedule"], train["warmup_steps"]) == ("warmup", plan.dit_warmup)
    assert (train["lr"], train["global_batch"]) == (plan.dit_lr, plan.dit_batch)
    assert (train["depth"], train["time_shift"]) == (plan.dit_depth, plan.dit_time_shift)
    assert (train["repa_weight"], train["repa_hidden"]) == (plan.repa_weight, plan.repa_hidden)
    assert (train["patch"], train["width"]) == (plan.dit_patch, plan.dit_width) == (2, 64)
    state = out / "dit" / "checkpoints" / f"step-{plan.dit_steps:07d}" / "state.json"
    model = json.loads(state.read_text())["extra"]["model_config"]
    assert (model["patch_size"], model["hidden_size"]) == (2, 64)  # the model built is that
    assert "decoder floor" in report and "real vs real" in report
    assert "reproduce_small.md" in report and "What the numbers mean" in report
    assert "benchmarks/results/demo/dit_steps.md" in report
    assert f"demo_seeds.py --demo {out} --dit-steps N" in report  # its plan.json says quick
    assert json.loads((out / "plan.json").read_text()) == plan.record()
    w, h = Image.open(out / "samples.png").size
    assert w >= 32 * 2 and h >= 10 * 32  # one row per class (2 samples each)
    assert Image.open(out / "recon.png").size[0] >= 32 * 9  # 6 images + 3 enlarged crops
    assert Image.open(out / "recon.png").size[1] >= 3 * 32  # original / recon / refined rows
    assert Image.open(out / "curves.png").size[0] > 400

    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    for stage in (
        "extract train",
        "pack train",
        "train dit",
        "refine train (waited for)",
        "sample",
    ):
        assert f"[{stage}] reused" in again.output, stage
    # the reused refiner's row gives the time it took to check it as such, not as training time
    row = next(r for r in (out / "report.md").read_text().splitlines() if "| refine train" in r)
    assert "| yes |" in row and "finished before, checked in" in row, row

    _other_plans_refused(out)
    _seed_spread(out, tmp_path, capsys)
    _pca_arm(out)

    # a file of the user's in one of the demo's folders: `--fresh` refuses, removing nothing
    (out / "dit" / "notes.txt").write_text("mine")
    before = snapshot(out)
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--fresh"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "Error:" in res.output and "notes.txt" in res.output
    assert snapshot(out) == before
    (out / "dit" / "notes.txt").unlink()

    # --fresh starts over: it removes every entry the demo wrote (and only those: the folder
    # rule itself is tested in test_pipeline.py), so the next run recomputes every stage
    assert {p.name for p in out.iterdir()} - {MARKER} <= set(DEMO_FILES)
    removed: list[str] = []
    claim_folder(out, "demo", DEMO_FILES, fresh=True, log=removed.append)
    assert [p.name for p in out.iterdir()] == [MARKER]  # nothing left to reuse: all reruns
    assert removed and all(m.startswith("--fresh: removing ") for m in removed)
    # the README's promise: a rerun on one machine gives the same numbers, key for key
    rerun = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert "] reused" not in rerun.output  # every stage ran again
    again = json.loads((out / "metrics.json").read_text())
    # the same samples.npz and the same weights files, bit for bit (the sha256 of each: a
    # safetensors header once made two saves of the same weights differ, and with them the
    # pack id, see tests/test_inprocess_determinism.py)
    assert {k: v for k, v in again.items() if k != "machine"} == {
        k: v for k, v in first.items() if k != "machine"
    }


def _pca_arm(out: Path) -> None:
    """`repackctl demo --pca-arm` on the finished quick demo: only the arm's stages run, with
    the demo's recipe on PCA latents, and the demo's own figures stay what they were."""
    before = json.loads((out / "metrics.json").read_text())
    res = runner.invoke(app, ["demo", "--quick", "--pca-arm", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for stage in ("pack train", "train dit", "sample"):
        assert f"[{stage}] reused" in res.output, stage
        assert f"[{stage} (PCA arm)] done" in res.output, stage
    after = json.loads((out / "metrics.json").read_text())
    assert {k: after[k] for k in before if k != "machine"} == {
        k: v for k, v in before.items() if k != "machine"
    }
    arm = ("fd_pca", "fd_decoder_pca", "colour_pca", "colour_decoder_pca", "recon_psnr_pca")
    for key in arm:
        assert math.isfinite(after[key]) and after[key] >= 0, key
    assert 0.0 <= after["class_accuracy_pca"] <= 1.0
    assert after["fd_decoder_pca"] != after["fd_decoder"]  # its own decoder, not the demo's
    pack = json.loads((out / "pack-pca" / "config.json").read_text())
    assert pack["extra"]["plan"]["method"] == "pca"

    def recipe(run: str) -> dict:
        train = json.loads((out / run / "config.json").read_text())["extra"]["train"]
        return {k: v for k, v in train.items() if k not in ("name", "pack_run", "latents")}

    assert recipe("dit-pca") == recipe("dit")  # the same DiT recipe, only the latents differ
    report = (out / "report.md").read_text()
    assert "| measure | RePack (the demo) | PCA arm |" in report
    assert f"PCA arm (plain) {after['fd_pca']:.2f}" in report  # beside the floors
    assert "`pack-pca/`" in report and "RePack-32 42.48 %" in report  # the paper's probe table
    assert Image.open(out / "samples-pca.png").size[1] >= 10 * 32  # one row per class
    # a rerun without the flag does not score the arm: its files are named as left over
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "| PCA arm |" not in report and "fd_pca" not in json.loads(
        (out / "metrics.json").read_text()
    )
    assert "`samples-pca.png`, `pack-pca/`, `dit-pca/` are left from an earlier run" in report
    # the arm belongs to the class-conditional demo: with --t2i it is refused, not ignored
    t2i = runner.invoke(app, ["demo", "--t2i", "--pca-arm", "--out", str(out / "t2i")])
    assert t2i.exit_code != 0 and "Error:" in t2i.output and "--pca-arm" in t2i.output
    assert not (out / "t2i").exists()
    _colour_readout(out / "cache")


def _colour_readout(cache: Path) -> None:
    """scripts/colour_readout.py on the demo's cache, which now holds two packs' latents: it
    reads the one --run names (the demo's own by default) and refuses an unknown run."""
    spec = importlib.util.spec_from_file_location("colour_readout", READOUT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    own, pca = script.readout(str(cache)), script.readout(str(cache), "pack-pca")
    assert own["tokens"] == pca["tokens"] and own["packed latent"] != pca["packed latent"]
    assert all(math.isfinite(v) for v in own.values())
    assert script.main([str(cache), "--run", "nope"]) == 2


def _other_plans_refused(out: Path) -> None:
    """A rerun in the folder with another plan (the full one, another seed) is refused before
    any stage runs, naming what differs; so is a folder of results without plan.json."""
    before = snapshot(out)
    full = runner.invoke(app, ["demo", "--out", str(out)])
    assert full.exit_code == 2 and "Traceback" not in full.output, full.output
    assert "another plan" in full.output and "dit_steps 30 → 3600" in full.output
    seed = runner.invoke(app, ["demo", "--quick", "--seed", "1", "--out", str(out)])
    assert seed.exit_code == 2 and "seed 0 → 1" in seed.output, seed.output
    assert snapshot(out) == before  # nothing written, nothing removed
    recorded = (out / "plan.json").read_bytes()
    (out / "plan.json").unlink()
    old = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert old.exit_code == 2 and "no plan.json" in old.output and "--fresh" in old.output
    assert not (out / "plan.json").exists()
    (out / "plan.json").write_text("{not json")  # damaged: refused, pointing to --fresh
    bad = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert bad.exit_code == 2 and "holds no plan" in bad.output and "--fresh" in bad.output
    (out / "plan.json").write_bytes(recorded)


def _seed_spread(out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`benchmarks/demo_seeds.py` on the finished quick demo: the DiT again with seed 1 on the
    demo's pack, in its own folder and a real worker process; the demo itself is only read."""
    spec = importlib.util.spec_from_file_location("demo_seeds", SEEDS)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seeds = tmp_path / "seeds"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    args = ["--demo", str(out), "--out", str(seeds)]
    assert script.main([*args, "--seeds", "1"]) == 0  # the quick plan, read from plan.json
    rows = json.loads((seeds / "seeds.json").read_text())
    assert [r["seed"] for r in rows] == [0, 1]
    demo = json.loads((out / "metrics.json").read_text())
    assert rows[0]["fd_refined"] == demo["fd_refined"]  # seed 0 is the demo's own run
    assert rows[1]["fd_decoder"] == pytest.approx(demo["fd_decoder"])  # the same pack
    assert rows[1]["fd_plain"] != demo["fd_plain"]  # another DiT and other noise
    assert "mean ± std" in (seeds / "seeds.md").read_text()
    # --dit-steps: seed 0 trained again, twice as long, in a folder of its own
    longer = tmp_path / "seeds-60"
    assert script.main([*args, "--seeds", "0"]) == 2  # seed 0 is the demo's own run
    assert script.main([*args[:2], "--out", str(longer), "--dit-steps", "0"]) == 2
    assert not longer.exists()
    assert script.main([*args[:2], "--out", str(longer), "--dit-steps", "60", "--seeds", "0"]) == 0
    row = json.loads((longer / "seeds.json").read_text())
    assert [r["seed"] for r in row] == [0] and row[0]["fd_plain"] != demo["fd_plain"]
    assert (longer / "seed-0" / "dit" / "checkpoints" / "step-0000060").is_dir()
    assert "(60 DiT steps)" in (longer / "seeds.md").read_text()
    # a folder of seeds of another length is refused, not mixed with these
    assert script.main([*args[:2], "--out", str(longer), "--seeds", "1"]) == 2
    assert not (longer / "seed-1").exists()
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing in the demo's folder written, added or removed
    # a seed folder holding a copy of another demo's pack: refused before anything is read
    card = next((seeds / "seed-1" / "pack" / "checkpoints").glob("step-*/state.json"))
    kept = card.read_bytes()
    card.write_bytes(kept + b" ")
    with pytest.raises(ConfigError, match="copy of another demo's pack run"):
        run_dit_seed(DemoPlan.of_demo(out), 1, seeds / "seed-1")
    card.write_bytes(kept)
    # a demo without plan.json (made before it was recorded): refused before anything runs
    (out / "plan.json").rename(tmp_path / "plan.json")
    assert script.main([*args, "--seeds", "2"]) == 2
    assert not (seeds / "seed-2").exists()
    # the demo's own seed is its plan's (`repackctl demo --seed 5`): that one is refused
    (out / "plan.json").write_text(json.dumps({**DemoPlan.quick(out).record(), "seed": 5}))
    capsys.readouterr()
    assert script.main([*args, "--seeds", "5"]) == 2
    assert "5 is the demo's own run" in capsys.readouterr().err
    # nor one recording another version's plan (a setting this version lacks)
    (out / "plan.json").write_text(json.dumps({**DemoPlan.quick(out).record(), "old": 1}))
    assert script.main([*args, "--seeds", "2"]) == 2
    assert not (seeds / "seed-2").exists()
    (tmp_path / "plan.json").replace(out / "plan.json")
    # nor one that differs only in its image count (its extract would write a new cache entry)
    with pytest.raises(ConfigError, match="no cache entry builtin-n119--train"):
        run_dit_seed(replace(DemoPlan.quick(out), n_train=119), 3, tmp_path / "other")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "other").exists()


def test_stages_that_run_alone_take_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert solo_threads() == 1 and DemoPlan(out=Path("x")).solo_threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert solo_threads() == min(2, os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty or invalid: the default
    assert solo_threads() == min(2, os.cpu_count() or 1)


def test_a_stage_the_demo_cannot_resume_points_to_fresh(tmp_path):
    from repackctl.demo import _Demo
    from repackctl.errors import CheckpointError, ResumeConflict
    from repackctl.progress import null_progress

    def old_run() -> None:  # what `pack train` raises on a run made under an older preset
        raise CheckpointError("run pack was trained with loss weight feature = 0.0, now 1.0", "x")

    demo = _Demo(DemoPlan(out=tmp_path / "demo"), null_progress, lambda _: None)
    with pytest.raises(CheckpointError) as e:
        demo.stage("pack train", old_run)
    assert "pack train run" in e.value.message and "feature = 0.0" in e.value.message
    assert "repackctl demo --fresh" in e.value.hint

    def other_recipe() -> None:  # what the settings check raises on a DiT run of another recipe
        raise ResumeConflict("resuming would change dit.lr: 0.001 → 0.006", "--allow-change lr")

    with pytest.raises(CheckpointError) as e:
        demo.stage("train dit", other_recipe)
    assert "train dit run" in e.value.message and "dit.lr" in e.value.message
    assert "repackctl demo --fresh" in e.value.hint and "--allow-change" not in e.value.hint
