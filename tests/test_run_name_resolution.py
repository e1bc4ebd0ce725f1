"""A bare run name (``-r dit-tiny``) means the run under ``--runs``, whatever the current folder
holds: a folder of the same name here that is no run (a samples folder) is passed over, one that
is a run or checkpoint of its own (an old copy) makes the name ambiguous and is refused, naming
both; ``./NAME`` or a full path picks one (``paths.resolve_checkpoint_arg``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.errors import ConfigError
from repackctl.paths import resolve_checkpoint_arg
from repackctl.train.checkpoint import checkpoint_for_loading, save_checkpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _run(runs: Path, name: str) -> Path:
    """A real (tiny) run: one complete checkpoint written by the training engine's saver."""
    sd = {"w": torch.zeros(2)}
    save_checkpoint(runs / name, 3, {"model": sd, "ema": sd}, {}, {"extra": {"stage": "dit"}})
    return runs / name


def _sample(stack: dict[str, str], run: str, out: Path) -> list[str]:
    return [
        "sample", "-r", run, "--runs", stack["runs"], "--cache", stack["cache"],
        "--samples", str(out), "-n", "2", "--steps", "2", "--device", "cpu",
    ]  # fmt: skip


def _sampled_checkpoint(samples: Path) -> str:
    (protocol,) = samples.rglob("protocol.json")
    return json.loads(protocol.read_text())["checkpoint"]


def test_a_copy_of_a_run_here_is_refused_naming_both(stack, tmp_path, monkeypatch) -> None:
    """An old copy of the run in the cwd was sampled silently instead of the run under --runs."""
    here = tmp_path / "wd"
    shutil.copytree(Path(stack["runs"]) / "dit-tiny", here / "dit-tiny")
    monkeypatch.chdir(here)
    out = cli_refused(2, *_sample(stack, "dit-tiny", here / "samples"))
    assert str(here / "dit-tiny") in out and str(Path(stack["runs"]) / "dit-tiny") in out, out
    assert "./dit-tiny" in out, out
    assert sorted(p.name for p in here.iterdir()) == ["dit-tiny"]  # nothing written
    cli_ok(*_sample(stack, "./dit-tiny", here / "samples"))  # the hint's way to pick the copy
    assert _sampled_checkpoint(here / "samples").startswith(str(here / "dit-tiny"))


def test_a_folder_here_that_is_no_run_is_passed_over(stack, tmp_path, monkeypatch) -> None:
    """A samples folder named like the run made sampling fail ("no complete checkpoint")."""
    here = tmp_path / "wd"
    (here / "dit-tiny" / "some-samples").mkdir(parents=True)
    monkeypatch.chdir(here)
    cli_ok(*_sample(stack, "dit-tiny", here / "samples"))
    runs = str(Path(stack["runs"]).resolve() / "dit-tiny")
    assert _sampled_checkpoint(here / "samples").startswith(runs)


def test_one_place_only_and_the_same_folder_work_as_before(tmp_path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    run = _run(runs, "a")
    here = tmp_path / "wd"
    here.mkdir()
    other = _run(here, "b")
    monkeypatch.chdir(here)
    assert resolve_checkpoint_arg(str(runs), "a") == run.resolve()  # only under --runs
    assert resolve_checkpoint_arg(str(runs), "b") == other.resolve()  # only here
    monkeypatch.chdir(runs)  # the cwd is the runs root: the same folder twice, no conflict
    assert resolve_checkpoint_arg(str(runs), "a") == run.resolve()
    assert resolve_checkpoint_arg(str(runs), str(run)) == run.resolve()  # a full path


def test_a_run_here_shadowing_one_under_runs_is_ambiguous(tmp_path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    run = _run(runs, "a")
    here = tmp_path / "wd"
    copy = _run(here, "a")
    monkeypatch.chdir(here)
    with pytest.raises(ConfigError, match="two different folders") as err:
        resolve_checkpoint_arg(str(runs), "a")
    assert str(copy.resolve()) in err.value.message and str(run) in err.value.message
    assert "./a" in (err.value.hint or "")
    assert resolve_checkpoint_arg(str(runs), "./a") == copy.resolve()


def test_a_checkpoint_name_follows_the_same_rule(tmp_path, monkeypatch) -> None:
    """``--checkpoint step-0000003`` means the run's checkpoint, not a same-named folder here."""
    runs = tmp_path / "runs"
    run = _run(runs, "a")
    here = tmp_path / "wd"
    (here / "step-0000003").mkdir(parents=True)
    monkeypatch.chdir(here)
    found = resolve_checkpoint_arg(str(runs), "a", "step-0000003")
    assert found == (run / "checkpoints" / "step-0000003").resolve()
    assert checkpoint_for_loading(found) == found
    shutil.rmtree(here / "step-0000003")
    shutil.copytree(found, here / "step-0000003")  # a checkpoint of its own: ambiguous
    with pytest.raises(ConfigError, match="two different folders"):
        resolve_checkpoint_arg(str(runs), "a", "step-0000003")
