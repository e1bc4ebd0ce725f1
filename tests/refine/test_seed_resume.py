"""A resume with another ``--seed`` (allowed with ``--allow-change seed`` or not) is refused
before anything is written, for what a seed changes (the order of samples).

The settings layer refused ``--seed 1`` with the hint "pass --allow-change seed to change it
anyway"; with that flag, the engine then refused it ("--allow-change does not apply"), but only
after ``refine train`` had decoded a whole new set of noisy triplets for seed 1 into the cache.
``--allow-change seed`` with the run's own seed was accepted and allowed nothing. Each is now
refused at once, naming the order of samples and the seed that resumes the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CheckpointError, ResumeConflict
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import KIND

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.lock"
    }


def test_a_resume_with_another_seed_writes_nothing_and_says_why(stack) -> None:
    common = ["--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]
    refine = ["refine", "train", "--name", "rs", *common]
    new = ["--pack-run", "pack-tiny", "--batch-size", "4", "--base-channels", "8"]
    cli_ok(*refine, *new, "--noise", "0.2", "--gan-weight", "0", "--steps", "1")
    run = Path(stack["runs"]) / "rs"
    pack = load_pack("pack-tiny", runs=stack["runs"])
    groups = DatasetEntry.open(stack["cache"], pack.extra["cache"]["entry"]).group[KIND]
    before, triplets = _files(run), sorted(groups.group_keys())
    for allow in ([], ["--allow-change", "seed"], ["--allow-change", "all"]):
        out = cli_refused(CheckpointError.exit_code, *refine, "--steps", "2", "--seed", "1", *allow)
        assert "trained with seed 0 (now 1)" in out and "order of samples" in out, out
        assert "--allow-change does not apply" in out and "Hint: resume with --seed 0" in out
        assert "pass --allow-change seed" not in out, out  # HEAD's hint without the flag
        assert sorted(groups.group_keys()) == triplets  # HEAD: a --seed1 triplet group
        assert _files(run) == before
    out = cli_refused(ResumeConflict.exit_code, *refine, "--steps", "2", "--allow-change", "seed")
    assert "--allow-change seed (from flag): seed cannot change on resume" in out, out
    assert "order of samples" in out and "drop --allow-change seed to resume with --seed 0" in out
    assert _files(run) == before
    cli_ok(*refine, "--steps", "2", "--seed", "0")  # the hint's way back resumes the run
    assert (run / "checkpoints" / "step-0000002").is_dir()


def test_train_dit_refuses_an_allowance_of_the_seed(
    tmp_path: Path, tmp_path_factory, monkeypatch
) -> None:
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    common = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    dit = ["train", "dit", "--name", "ds", "-b", "4", "--image-every", "0", "--device", "cpu"]
    dit += common
    cli_ok(*dit, "--steps", "1")
    run = tmp_path / "runs" / "ds"
    before = _files(run)
    out = cli_refused(ResumeConflict.exit_code, *dit, "--steps", "2", "--allow-change", "seed")
    assert "seed cannot change on resume" in out, out  # HEAD: accepted, and allowed nothing
    monkeypatch.setenv("REPACKCTL_SEED", "3")
    out = cli_refused(CheckpointError.exit_code, *dit, "--steps", "2")
    assert "trained with seed 0 (now 3)" in out and "unset REPACKCTL_SEED" in out, out
    assert _files(run) == before
