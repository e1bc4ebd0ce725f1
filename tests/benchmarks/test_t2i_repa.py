"""`benchmarks/t2i_repa.py --quick`: the text-to-image REPA study at a toy size, run as a user
runs it (a real subprocess): every arm scored, its plan recorded; then, in this process (its
refusals happen before any work), another plan in that folder refused before anything is
written, seeds added to the finished folder, and the report rewritten from its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from repackctl.run_lock import released_after

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "t2i_repa.py"


def _in_process(*argv: str) -> int:
    sys.path.insert(0, str(SCRIPT.parent))
    from t2i_repa import main

    with released_after():  # the folder's lock, as when the script's process ends
        return main(list(argv))


@pytest.mark.slow
def test_quick_study_records_its_plan_and_refuses_another(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "study"
    env = subprocess_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    runs = sorted((r["seed"], r["repa_weight"]) for r in doc["runs"])
    assert runs == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]  # each seed with and without REPA
    assert all(r["fd"] >= 0 and 0 <= r["shape_accuracy"] <= 1 for r in doc["runs"])
    assert "REPA" in (out / "t2i_repa.md").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps"] == doc["plan"]["steps"] and "seeds" not in plan

    for key in ("REPACKCTL_CACHE", "REPACKCTL_RUNS", "REPACKCTL_NUM_WORKERS"):
        monkeypatch.setenv(key, env[key])  # the subprocess's cache and roots
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert _in_process("--out", str(out)) == 2  # the full plan in the quick study's folder
    err = capsys.readouterr().err
    assert "another plan" in err and "n_train 64 → 2000" in err and "Hint:" in err
    assert _in_process("--quick", "--seeds", "0", "--out", str(out)) == 2
    assert "two distinct seeds" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    assert _in_process("--quick", "--seeds", "0,1,2", "--out", str(out)) == 0  # a seed added
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 6
    assert (out / "t2i-plain-s0").stat().st_mtime_ns == before[out / "t2i-plain-s0"]  # reused
    # --from-results rewrites the report only; from a folder without results it is an error
    report = tmp_path / "again.md"
    assert _in_process("--out", str(out), "--from-results", "--report", str(report)) == 0
    assert "| " in report.read_text()
    assert doc["machine"]["threads"] >= 1 and doc["machine"]["node"] in report.read_text()
    # without --report a quick study's report goes back into its --out, never over the
    # committed table (it replaced benchmarks/results/t2i_repa.md)
    committed = Path(SCRIPT).parent / "results" / "t2i_repa.md"
    before_table = committed.read_bytes()
    (out / "t2i_repa.md").unlink()
    assert _in_process("--out", str(out), "--from-results") == 0
    assert (out / "t2i_repa.md").is_file() and committed.read_bytes() == before_table
    capsys.readouterr()
    none = tmp_path / "none"
    assert _in_process("--out", str(none), "--from-results", "--report", str(report)) == 2
    assert "holds no finished study" in capsys.readouterr().err
    # results of an older version (its plan without the recipe's MMDiT shape) are refused:
    # the report would describe the defaults, not what that study ran
    older = tmp_path / "older"
    older.mkdir()
    doc = json.loads((out / "results.json").read_text())
    del doc["plan"]["depth"]
    (older / "results.json").write_text(json.dumps(doc))
    assert _in_process("--out", str(older), "--from-results", "--report", str(report)) == 2
    err = capsys.readouterr().err
    assert "records another version's plan (settings depth differ)" in err, err
    # a file of the user's at --report: refused before any work, left as it is
    notes = tmp_path / "notes.md"
    notes.write_text("mine")
    assert _in_process("--quick", "--out", str(none), "--report", str(notes)) == 2
    assert "is not a report of this study" in capsys.readouterr().err
    assert notes.read_text() == "mine" and not none.exists()
    assert _in_process("--out", str(out), "--from-results", "--report", str(notes)) == 2
    assert notes.read_text() == "mine"
