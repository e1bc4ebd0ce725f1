"""`benchmarks/t2i_repa.py --quick`: the text-to-image REPA study at a toy size, run as a user
runs it (a real subprocess): every arm scored, its plan recorded, seeds added to a finished
folder, and another plan in that folder refused before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "t2i_repa.py"


def _study(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *flags],
        env=subprocess_env(out.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_quick_study_records_its_plan_and_refuses_another(tmp_path) -> None:
    out = tmp_path / "study"
    proc = _study(out, "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    runs = sorted((r["seed"], r["repa_weight"]) for r in doc["runs"])
    assert runs == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]  # each seed with and without REPA
    assert all(r["fd"] >= 0 and 0 <= r["shape_accuracy"] <= 1 for r in doc["runs"])
    assert "REPA" in (out / "t2i_repa.md").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps"] == doc["plan"]["steps"] and "seeds" not in plan
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    full = _study(out)  # the full plan in the quick study's folder
    assert full.returncode == 2 and "Traceback" not in full.stderr
    assert "another plan" in full.stderr and "n_train 64 → 512" in full.stderr
    assert "Hint:" in full.stderr
    bad = _study(out, "--quick", "--seeds", "0")
    assert bad.returncode == 2 and "two distinct seeds" in bad.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    more = _study(out, "--quick", "--seeds", "0,1,2")  # a seed added: the others reused
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 6
    assert (out / "t2i-plain-s0").stat().st_mtime_ns == before[out / "t2i-plain-s0"]
    # --from-results rewrites the report only; from a folder without results it is an error
    report = tmp_path / "again.md"
    again = _study(out, "--from-results", "--report", str(report))
    assert again.returncode == 0 and "| " in report.read_text()
    empty = _study(tmp_path / "none", "--from-results", "--report", str(report))
    assert empty.returncode == 2 and "holds no finished study" in empty.stderr
    assert "Traceback" not in empty.stderr
