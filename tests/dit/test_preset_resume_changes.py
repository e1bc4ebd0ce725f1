"""Audit s37 B (findings 1-3) of `train dit` resumed under another preset.

1. A resume refused after ``sampling.json`` was written (by the checkpoint: a refused load, a
   refused launcher precision) left the new preset's file in the run, and ``sample`` used it
   without a word: a refused resume now changes no file of the run.
2. An allowed preset change applied the new preset's values silently (only ``steps``,
   ``preset`` and ``patch`` were printed and recorded): each value it brings is printed as
   ``setting: old → new (preset paper)`` and recorded in ``config_history.jsonl``.
3. ``--allow-change`` of a setting that shapes the network (``--preset repa`` bringing SiT-XL,
   ``--depth 3 --allow-change all`` on a run that left depth to its size) built the network and
   ended in a raw ``load_state_dict`` dump: it is refused before any model is built, naming it.

Real CLI runs on a real cache with packed latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError, ResumeConflict

pytestmark = pytest.mark.usefixtures("one_thread")

DIT = ["train", "dit", "-b", "8", "--device", "cpu", "--image-every", "0", "--name", "d"]
# the run's network and REPA weight given: paper's XL size and REPA off cannot change on resume
PAPER = ["--preset", "paper", "--allow-change", "preset", "--size", "tiny", "--repa-weight", "0.5"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".lock"}


def test_a_preset_change_on_resume_is_said_value_by_value_and_a_refused_one_writes_nothing(
    tmp_path, tmp_path_factory, monkeypatch
):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    run = tmp_path / "runs" / "d"
    cli_ok(*DIT, "--steps", "1", "--repa-weight", "0.5")
    before = _files(run)
    # 3: the network a preset or an allowance would change is refused before any model is built
    out = cli_refused(ResumeConflict.exit_code, *DIT, "--steps", "2", "--preset", "repa",
                      "--allow-change", "preset")  # fmt: skip
    assert "dit.preset: 'small' → 'repa', which brings dit.arch: 'lightningdit' → 'sit'" in out
    assert "dit.size cannot change on resume (--allow-change does not apply to it)" in out, out
    assert "load_state_dict" not in out and "Missing key" not in out, out
    out = cli_refused(ResumeConflict.exit_code, *DIT, "--steps", "2", "--depth", "3",
                      "--allow-change", "all")  # fmt: skip
    assert "dit.depth: 2 → 3" in out and "dit.depth cannot change on resume" in out, out
    assert "load_state_dict" not in out, out
    assert _files(run) == before
    # 1: refused by the engine (the launcher's precision), after the file was written
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = cli_refused(CheckpointError.exit_code, *DIT, "--steps", "2", *PAPER)
    assert "bf16" in out, out
    assert not (run / "sampling.json").exists()
    assert _files(run) == before
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    # 2: accepted, every value the preset brings is said and recorded; the file is the run's
    out = " ".join(cli_ok(*DIT, "--steps", "2", *PAPER).split())
    for line in [
        "dit.preset: 'small' → 'paper' (allowed by --allow-change)",
        "dit.schedule: 'constant' → 'step' (preset paper)",
        "dit.latent_sampling: 'mean' → 'fixed' (preset paper)",
        "dit.ema_warmup: True → False (preset paper)",
        "dit.kernels: 'auto' → 'eager' (preset paper)",
        "dit.tf32: True → False (preset paper)",
    ]:
        assert f"resume: {line}" in out, out
        assert f"resume: {line}" in " ".join((run / "log.txt").read_text().split())
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    changes = [c for h in history for c in h.get("changes", [])]
    assert ["dit.schedule", "constant", "step"] in changes, changes
    assert ["dit.preset", "small", "paper"] in changes, changes
    assert json.loads((run / "sampling.json").read_text())["defaults"]["cfg"] == 15.0
