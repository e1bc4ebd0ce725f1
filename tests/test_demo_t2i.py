"""`repackctl demo --t2i --quick`: every stage, the labelled prompt grid, finite scores, reuse,
`--fresh` (refused over a file of the user's, then a clean start)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.snapshot import assert_scored, snapshot
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.demo_t2i import T2IDemoPlan, grid_scale, short_prompts
from repackctl.train import latest_checkpoint, read_state

runner = CliRunner()


def test_short_prompts_are_the_short_builtin_captions():
    keys = [f"builtin:0:val:{i}" for i in range(40)]
    prompts = short_prompts(keys, 5)
    assert len(prompts) == len(set(prompts)) == 5
    assert all(p.startswith(("a ", "an ")) and len(p.split()) <= 5 for p in prompts)


@pytest.mark.slow
def test_demo_t2i_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "demo-t2i"
    res = runner.invoke(app, ["demo", "--t2i", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    for name in ("report.md", "prompts.png", "metrics.json"):
        assert (out / name).is_file(), name
    for folder in ("cache", "pack", "t2i", "samples"):
        assert (out / folder).is_dir(), folder
    plan = T2IDemoPlan.quick(out)
    m = json.loads((out / "metrics.json").read_text())
    for key in ("shape_accuracy", "colour_accuracy", "fd"):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    for key in ("shape", "colour"):
        assert 0 <= m["classifier_real_val_accuracy"][key] <= 1
        assert 0 <= m["classifier_recon_val_accuracy"][key] <= 1
    assert m["chance"]["shape"] == pytest.approx(0.1)
    assert m["n_samples"] == len(m["prompts"]) * plan.seeds_per_prompt
    report = (out / "report.md").read_text()
    assert "| shape |" in report and "real val images" in report and "**total**" in report
    # the plan's MMDiT shape is the one trained (mmdit-s-2 cut to 1 block of width 32)
    config = read_state(latest_checkpoint(out / "t2i"))["extra"]["model_config"]
    assert (config["depth"], config["hidden_size"], config["num_heads"]) == (1, 32, 2)
    assert "mmdit-s-2 (depth 1, width 32, heads 2)" in report

    # one row per prompt, each labelled with its prompt in a left margin (dark text pixels)
    grid = np.asarray(Image.open(out / "prompts.png").convert("L"))
    rows = min(plan.grid_rows, len(m["prompts"]))
    cell, pad = plan.resolution * grid_scale(plan.resolution), 2
    assert grid.shape[0] == rows * (cell + pad) + pad
    margin = grid.shape[1] - (plan.seeds_per_prompt * (cell + pad) + pad)
    assert margin > 40
    for r in range(rows):
        band = grid[pad + r * (cell + pad) : (r + 1) * (cell + pad), :margin]
        assert (band < 100).any(), f"row {r} has no label"

    again = runner.invoke(app, ["demo", "--t2i", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    for stage in (
        "extract train",
        "pack train",
        "captions (waited for)",
        "train t2i",
        "sample",
        "evaluate",
    ):
        assert f"[{stage}] reused" in again.output, stage
    assert json.loads((out / "metrics.json").read_text())["shape_accuracy"] == m["shape_accuracy"]
    # its plan is recorded: the full plan in this folder is refused before any stage runs
    assert json.loads((out / "plan.json").read_text()) == plan.record()
    before = snapshot(out)
    full = runner.invoke(app, ["demo", "--t2i", "--out", str(out)])
    assert (
        full.exit_code == 2 and "another plan" in full.output and "n_train 64 → 2000" in full.output
    )
    assert "demo --t2i --fresh" in full.output and snapshot(out) == before
    _fresh(out, m)


def _fresh(out: Path, m: dict) -> None:
    """metrics.json names what was scored; `--fresh` refuses over a file of the user's in the
    demo's samples folder, removing nothing, and once it is moved out starts over."""
    args = ["demo", "--t2i", "--quick", "--out", str(out)]
    assert_scored(m["scored"], "t2i--")
    assert m["scored"]["refiner"] is None
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # renamed into place
    (out / "samples" / "my_notes.txt").write_text("mine")
    before = snapshot(out)
    res = runner.invoke(app, [*args, "--fresh"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "Error:" in res.output and "Hint:" in res.output and "my_notes.txt" in res.output
    assert "--fresh: removing" not in res.output
    assert snapshot(out) == before
    (out / "samples" / "my_notes.txt").rename(out.parent / "my_notes.txt")
    res = runner.invoke(app, [*args, "--fresh"])
    assert res.exit_code == 0, res.output
    assert "--fresh: removing" in res.output and "] reused" not in res.output
    again = json.loads((out / "metrics.json").read_text())["scored"]
    assert_scored(again, "t2i--")
    assert again["samples"] == m["scored"]["samples"]
