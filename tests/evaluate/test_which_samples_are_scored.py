"""Which samples `evaluate` scores for a run, and what `sample` refuses to write.

Found by an audit of silent wrong answers: a run whose name starts another run's name
(``dit`` / ``dit--b``) was scored on the other run's samples; sampling settings given to
`evaluate fid RUN` were dropped when the run already had samples; NaN latents (a guidance scale
that overflows, or a NaN default in ``sampling.json``) were written as black PNGs and scored;
`--guide-checkpoint` without `--guide` was dropped; `evaluate probe --entry` on the run's own
training entry gave no word that it was not held out. One tiny stack is shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.caches import shared_tiny_dit_stack
from support.cli import cli_ok, cli_refused

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]
ENTRY = "builtin-n16--train--32px"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """cache/ (train + val split), runs/pk (pack, 2 steps), runs/dit (checkpoints 1 and 2)."""
    return shared_tiny_dit_stack(tmp_path_factory, tmp_path_factory.mktemp("scored"), val=True)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Path:
    """A copy of the stack's runs (tests add runs and files to it), its cache, samples here."""
    runs = tmp_path / "runs"
    shutil.copytree(stack / "runs", runs)
    monkeypatch.setenv("REPACKCTL_CACHE", str(stack / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(runs))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    return tmp_path


def _sample(run: str, *extra: str) -> str:
    return cli_ok("sample", "-r", run, "-n", "4", "--steps", "2", "--grid", "0", *CPU, *extra)


def _card(folder: Path) -> dict:
    doc = json.loads((folder / "metrics.json").read_text())
    return doc.get("card") or doc["protocol"]


def test_a_run_is_never_scored_on_the_samples_of_a_run_whose_name_it_starts(env):
    shutil.copytree(env / "runs" / "dit", env / "runs" / "dit--b")
    _sample("dit--b")
    (folder,) = (env / "samples").iterdir()
    assert folder.name.startswith("dit--b--step-")
    out = cli_refused(4, "evaluate", "fid", "dit", *CPU)  # before: scored dit--b's samples
    assert "no samples folder made from it" in out, out
    _sample("dit")
    out = cli_ok("evaluate", "fid", "dit", *CPU)
    assert "dit--step-0000002" in out and "dit--b--step" not in out, out


def test_sampling_settings_given_to_evaluate_are_used_or_refused(env):
    _sample("dit")  # seed 0
    out = cli_refused(2, "evaluate", "fid", "dit", "--seed", "7", *CPU)
    assert "--seed 7" in out and "--samples N" in out, out  # before: scored the seed-0 folder
    out = cli_ok("evaluate", "fid", "dit", "--samples", "4", "--seed", "7", *CPU)
    folders = sorted(p.name for p in (env / "samples").iterdir())
    assert [n.endswith("--seed7") for n in folders] == [False, True], folders
    assert _card(env / "samples" / folders[1])["seed"] == 7
    # the same request again reuses that folder: nothing sampled, nothing new
    cli_ok("evaluate", "fid", "dit", "--samples", "4", "--seed", "7", *CPU)
    assert sorted(p.name for p in (env / "samples").iterdir()) == folders


def test_non_finite_samples_are_refused_not_written_black(env):
    out = cli_refused(4, "sample", "-r", "dit", "-n", "4", "--steps", "2", "--cfg", "1e300", *CPU)
    assert "not finite" in out and "--cfg" in out, out
    pngs = list((env / "samples").rglob("*.png")) if (env / "samples").exists() else []
    assert pngs == []  # before: four black PNGs and a finished folder
    # a sampling.json default gets the flag's checks: NaN and a negative scale are refused
    for bad in ("NaN", "-2.0"):
        (env / "runs" / "dit" / "sampling.json").write_text(f'{{"defaults": {{"cfg": {bad}}}}}')
        out = cli_refused(7, "sample", "-r", "dit", "-n", "4", "--steps", "2", *CPU)
        assert "sampling.json" in out and "cfg" in out, out


def test_a_guide_checkpoint_without_a_guide_is_refused(env):
    args = ["sample", "-r", "dit", "-n", "4", "--steps", "2", *CPU]
    out = cli_refused(2, *args, "--guide-checkpoint", "step-0000001")
    assert "--guide" in out and not (env / "samples").exists()  # before: plain samples


def test_probe_on_the_runs_own_training_entry_says_it_is_not_held_out(env):
    args = ["evaluate", "probe", "--run", "pk", "--entry", ENTRY, "--epochs", "1", *CPU]
    out = cli_ok(*args)
    assert f"training entry {ENTRY}: not held out" in out, out


def test_the_default_reference_is_read_from_the_cache_the_dit_trained_from(env):
    """`--cache other` holding an entry of the same name (the built-in data drawn with another
    seed) was taken as the reference: the score was against other images."""
    _sample("dit")
    other = env / "other-cache"
    extract = ["extract", "-e", "patchpix", "--resolution", "32", "-n", "16", "--chunk", "8"]
    cli_ok(*extract, "--shard", "16", "--seed", "1", "--cache", str(other), *CPU)
    assert (other / ENTRY).is_dir()  # the same name, other images
    a, b = env / "a.json", env / "b.json"
    cli_ok("evaluate", "fid", "dit", "--out", str(a), *CPU)
    out = cli_ok("evaluate", "fid", "dit", "--out", str(b), "--cache", str(other), *CPU)
    assert "of the cache" in out, out  # the message names the cache it read
    fd = [json.loads(p.read_text())["metrics"]["fd"] for p in (a, b)]
    assert fd[0] == fd[1], fd
