"""Autoguidance at ``--cfg 0`` on every step, ``v_guide + 0·(v_main − v_guide)``, is the guide
model alone: `sample -r MAIN --guide G --cfg 0` wrote the guide's samples byte for byte under a
folder and card naming MAIN's checkpoint (which `evaluate fid MAIN` then scored as MAIN's). It is
refused before anything is written; a guidance interval that leaves steps to the main model
still samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import guide_run, shared_stack

from repackctl.errors import ConfigError
from repackctl.paths import PROTOCOL_JSON


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _args(stack: dict[str, str], samples: Path, *extra: str) -> list[str]:
    args = ["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--batch-size", "2"]
    args += ["--grid", "0", "--device", "cpu", "--runs", stack["runs"], "--cache", stack["cache"]]
    return [*args, "--samples", str(samples), "--guide", guide_run(stack), *extra]


def test_autoguidance_at_scale_zero_on_every_step_is_refused(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    out = cli_refused(ConfigError.exit_code, *_args(stack, samples, "--cfg", "0"))
    assert "--cfg 0" in out and "dit-guide" in out and "guide alone" in out, out
    assert "repackctl sample --run dit-guide" in out.split("Hint:")[1], out
    assert not samples.exists()  # nothing written, not even the samples root


def test_autoguidance_at_scale_zero_on_some_steps_uses_the_main_model(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    # Euler, 2 steps: calls at t = 1 and t = 0.5; [0.6, 1] guides (replaces) only the first
    cli_ok(*_args(stack, samples, "--cfg", "0", "--cfg-t-lo", "0.6"))
    (folder,) = samples.iterdir()
    card = json.loads((folder / PROTOCOL_JSON).read_text())
    assert card["cfg_scale"] == 0.0 and card["guide"]["checkpoint"], card
