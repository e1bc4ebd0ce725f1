"""A resume that changes nothing records nothing (README, Train: allowed changes and replaced
configs are kept in ``config_history.jsonl`` once the run goes on).

A run killed past its first checkpoint and started again with the same command wrote its
``config.json`` anew with every value it kept as stored read ``stored run config`` (the values
its preset filled in, ``preset auto → small``, what it resolved when it started): another
``config_sha256`` than the uninterrupted run's, and a ``replaced`` line in the history for no
change. For each training command, a tiny real run (flags, ``REPACKCTL_*`` and a config file
among its sources) is cut back to its first checkpoint (the newest removed: what a kill leaves)
and run again as started: its ``config.json`` is byte for byte the one it wrote, and no history
appears. A resume with an allowed change records the change as before, and the values it did
not change keep the sources they started with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.caches import shared_t2i_stack
from support.cli import cli_ok

TINY = {
    "pack": ["pack", "train", "-e", "patchpix", "--resolution", "32", "-n", "32", "-c", "4"],
    "dit": ["train", "dit", "-b", "8"],
    "t2i": ["train", "t2i", "-b", "8"],
    "refine": ["refine", "train", "--batch-size", "4"],
}
MORE = {
    "pack": ["--ch", "8", "--batch-size", "8", "--image-every", "0"],
    "dit": ["--image-every", "0"],
    "t2i": ["--image-every", "0"],
    "refine": [],
}
LR = {"pack": "0.003", "dit": "0.0003", "t2i": "0.0003", "refine": "0.0003"}


def _config(run: Path) -> dict[str, Any]:
    return json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("section", list(TINY))
def test_a_resume_that_changes_nothing_writes_the_config_the_run_started_with(
    section, tmp_path_factory, tmp_path, monkeypatch
):
    from conftest import one_torch_thread

    work = shared_t2i_stack(tmp_path_factory, tmp_path / "w")
    env = {"CACHE": work / "cache", "RUNS": work / "runs", "NUM_WORKERS": 0, "DEVICE": "cpu"}
    for key, value in env.items():
        monkeypatch.setenv(f"REPACKCTL_{key}", str(value))
    monkeypatch.setenv(f"REPACKCTL_{section.upper()}__CKPT_EVERY", "1")
    (tmp_path / "c.toml").write_text(f"[{section}]\nlog_every = 1\n")
    argv = [*TINY[section], *MORE[section], "--name", "r", "--config", str(tmp_path / "c.toml")]
    run, step2 = work / "runs" / "r", work / "runs" / "r" / "checkpoints" / "step-0000002"
    with one_torch_thread():
        cli_ok(*argv, "--steps", "2")
        started = (run / "config.json").read_bytes()
        sources = json.loads(started)["extra"]["settings"]["sources"]
        layers = {s.split(" ")[0] for s in sources.values()}
        assert {"flag", "env", "file"} <= layers and layers & {"preset", "stored"}, layers
        shutil.rmtree(step2)  # a kill after the first checkpoint
        out = cli_ok(*argv, "--steps", "2")
        assert "resumed from" in out and "(step 1)" in out and step2.is_dir(), out
        assert (run / "config.json").read_bytes() == started
        assert not (run / "config_history.jsonl").exists()
        # an allowed change: recorded as it was; what it did not change keeps its sources
        cli_ok(*argv, "--steps", "3", "--lr", LR[section], "--allow-change", "lr")
    lines = (run / "config_history.jsonl").read_text().splitlines()
    history, first = [json.loads(line) for line in lines], json.loads(started)
    assert [sorted(h) for h in history] == [["changes", "time"], ["replaced", "time"]], history
    assert history[0]["changes"] == [[f"{section}.lr", first["lr"], float(LR[section])]]
    assert history[1]["replaced"] == first
    record = _config(run)["extra"]["settings"]
    assert record["values"][section]["lr"] == float(LR[section])
    now = {f"{section}.{name}": "flag" for name in ("lr", "allow_change", "steps")}
    assert record["sources"] == {**sources, **now}
