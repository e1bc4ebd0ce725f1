"""A sample run that `repackctl sample` started but did not finish is refused as a reference
(`evaluate stats FOLDER`, `evaluate fid --ref FOLDER`), as it is on the generated side: its
statistics were of the few PNGs written before the kill (4 of 40), with no word that the run
was unfinished.

Real components: the shared toy stack (extract → pack train → a DiT run), a real `repackctl
sample` subprocess killed with SIGKILL, the built-in encoder's FD on the CPU, Typer's CliRunner.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.cli import cli_ok, cli_refused
from support.kill import kill_after_pngs
from support.stack import FD_SCORE, FD_WEIGHTS, build_stack, stack_env

from repackctl.errors import DataError

STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return build_stack(tmp_path_factory.mktemp("audit6-unfinished"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch):
    yield from stack_env(stack, tmp_path, monkeypatch)


def test_an_unfinished_sample_run_is_refused_as_a_reference(env, tmp_path):
    partial = Path(env["samples"]) / "partial"
    cmd = ["sample", "-r", "dit-tiny", "-n", "40", "--steps", "200", "--batch-size", "1"]
    cmd += ["--device", "cpu", "--out", str(partial)]
    run_env = subprocess_env(tmp_path, REPACKCTL_CACHE=env["cache"], REPACKCTL_RUNS=env["runs"])
    kill_after_pngs(cmd, run_env, partial)
    assert len(list(partial.glob("0*.png"))) >= 2 and not (partial / "protocol.json").exists()

    sdir = tmp_path / "stats"
    out = cli_refused(DataError.exit_code, *STATS, str(partial), "--stats-dir", str(sdir))
    assert f"the reference folder {partial} was not finished by `repackctl sample`" in out, out
    assert "rerun the same `repackctl sample` command" in out
    assert not sdir.exists()  # refused before anything was computed

    done = Path(env["samples"]) / "done"
    finished = ["sample", "-r", "dit-tiny", "-n", "20", "--steps", "2", "--device", "cpu"]
    cli_ok(*finished, "--out", str(done))
    metrics = tmp_path / "m.json"
    out = cli_refused(
        DataError.exit_code, "evaluate", "fid", str(done), *FD_SCORE[2:], "--ref", str(partial),
        "--out", str(metrics), "--stats-dir", str(sdir),
    )  # fmt: skip
    assert f"the reference folder {partial} was not finished" in out, out
    assert not metrics.exists() and not sdir.exists()

    # the same PNGs without the sampler's settings file are a folder of images: summarised
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for png in partial.glob("0*.png"):
        shutil.copy(png, pngs / png.name)
    cli_ok(*STATS, str(pngs), "--stats-dir", str(sdir))
    assert len(list(sdir.glob("*.npz"))) == 1
