"""A training command pointed at another stage's run (same --runs, that run's --name) is refused
as such, before it writes: not as a changed setting, nor as that run "at step N, nothing to
train" shown as if it were one of this stage's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from support.snapshot import snapshot

from repackctl.errors import ConfigError

N = 32
CPU = ["--device", "cpu", "--image-every", "0"]
STARTS = {
    "dit": ["train", "dit", "-b", "8", "--steps", "4", *CPU],
    "t2i": ["train", "t2i", "-b", "8", "--steps", "4", *CPU],
    "pack": ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", str(N),
             "--steps", "4", "--batch-size", "8", "--ch", "16", "-c", "4", *CPU],
    "refine": ["refine", "train", "--pack-run", "pk", "--steps", "4", "--device", "cpu"],
}  # fmt: skip
RUNS = {"pack": "pk", "dit": "d"}  # the runs of the module's folders, by stage


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with latents and runs/ with a 4-step pack run ``pk`` and a 2-step DiT run ``d``."""
    root = tmp_path_factory.mktemp("stage")
    shared_packed_cache(tmp_path_factory, root / "cache", N)
    with one_torch_thread():
        roots = ["--cache", str(root / "cache"), "--runs", str(root / "runs")]
        cli_ok(*STARTS["dit"], "--steps", "2", "--name", "d", *roots)
    return root


@pytest.fixture
def roots(base, tmp_path) -> Path:
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


CASES = [(cmd, run) for cmd in STARTS for run in RUNS if cmd != run]


@pytest.mark.parametrize(("command", "stage"), CASES)
def test_a_run_of_another_stage_is_refused_as_such(command, stage, roots):
    run = roots / "runs" / RUNS[stage]
    before = snapshot(run)
    out = cli_refused(ConfigError.exit_code, *STARTS[command], "--name", RUNS[stage])
    assert f"{run} is a {stage} run, not a {command} run" in out
    assert f"pass another --name to start a new {command} run" in out
    assert "resuming would change" not in out
    assert snapshot(run) == before  # nothing written, not even a lock file


def test_a_pack_run_is_refused_by_train_dit_without_any_flag_it_would_compare(roots):
    """No setting given that the pack run recorded differently: the pack checkpoint was shown as
    a DiT run at step 4, "nothing trained"."""
    out = cli_refused(ConfigError.exit_code, "train", "dit", "--steps", "2", *CPU, "--name", "pk")
    assert "is a pack run, not a dit run" in out and "nothing trained" not in out


def test_the_stage_of_a_run_without_config_json_comes_from_its_checkpoint(roots):
    run = roots / "runs" / "pk"
    (run / "config.json").unlink()  # e.g. an imported run: only checkpoints
    out = cli_refused(ConfigError.exit_code, *STARTS["dit"], "--name", "pk")
    assert "is a pack run, not a dit run" in out


def test_a_run_of_the_same_stage_still_resumes(roots):
    with one_torch_thread():
        out = cli_ok(*STARTS["dit"], "--steps", "3", "--name", "d")
    assert "resumed at 2" in out


@pytest.mark.parametrize(("command", "stage"), [("dit", "pack"), ("pack", "dit")])
def test_show_config_refuses_a_run_of_another_stage(command, stage, roots):
    """`--show-config` prints the values a resume would use: for another stage's run it printed
    the other stage's record compared as this stage's settings (or refused a "changed setting")
    where the command itself refuses the run."""
    out = cli_refused(
        ConfigError.exit_code, *STARTS[command], "--name", RUNS[stage], "--show-config"
    )
    assert f"is a {stage} run, not a {command} run" in out
