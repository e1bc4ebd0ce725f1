"""`evaluate fid RUN` with the run's newest checkpoint damaged is refused, as the README says of
`sample`, `refine`, `evaluate` and `pack encode` given a run (audit A of session 37, finding 6):
it used to score the run's newest samples folder (exit 0) and, since the damaged checkpoint
was left out of the listing, to name an older checkpoint as the run's newest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.caches import shared_tiny_dit_stack
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """cache/ (train + val split), runs/pk (pack, 2 steps), runs/dit (checkpoints 1 and 2)."""
    return shared_tiny_dit_stack(tmp_path_factory, tmp_path_factory.mktemp("scored"), val=True)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Path:
    """A copy of the stack's runs (the test damages it), its cache, samples here."""
    shutil.copytree(stack / "runs", tmp_path / "runs")
    monkeypatch.setenv("REPACKCTL_CACHE", str(stack / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    return tmp_path


def test_evaluate_of_a_run_whose_newest_checkpoint_is_damaged_is_refused(env):
    cli_ok("sample", "-r", "dit", "-n", "4", "--steps", "2", "--grid", "0", *CPU)
    (folder,) = (env / "samples").iterdir()
    newest = env / "runs" / "dit" / "checkpoints" / "step-0000002"
    state = json.loads((newest / "state.json").read_text())
    (newest / "state.json").write_text(json.dumps(state | {"step": 1}))  # the audit's edit

    out = cli_refused(CheckpointError.exit_code, "evaluate", "fid", "dit", *CPU)
    flat = " ".join(out.split())
    assert "checkpoint step-0000002, the newest of run dit, is damaged" in flat, out
    assert "state.json does not match the sha256" in flat, out
    assert "step-0000001" in flat and "Hint:" in out, out
    assert not (folder / "metrics.json").exists()  # nothing scored
    # the samples folder itself (made before the damage) is still scored when named
    cli_ok("evaluate", "fid", str(folder), *CPU)
    assert (folder / "metrics.json").is_file()
