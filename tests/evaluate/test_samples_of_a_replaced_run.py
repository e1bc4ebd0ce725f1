"""Samples of an earlier run of the same name (removed and trained again) are not the new run's.

- `evaluate fid RUN` (and with `--samples-root`) scored a refined folder made from the REMOVED
  run's samples (`refine apply` → `…--<refiner>`) and reported its score as the new run's: the
  checkpoint sha256 was compared only for a checkpoint folder given, not a run name, and a
  refined folder's `.sample-settings.json` recorded no checkpoint sha256, so `runs info RUN`
  listed it under the new run's `samples`. Now both compare the sha256 for a run name too, a
  refined folder records the weights of the samples it refined, and where the only folders
  are another run's, `evaluate fid RUN` refuses (never scores one of them as the run's).
- `sample` into a folder of the removed run hinted "pass `--checkpoint step-N` (the checkpoint
  it was made from)", which gave the same error (the new run's step-N holds other weights). The
  hint names the checkpoint only when its weights are the folder's; otherwise it says the
  checkpoint is gone (the run was replaced).

The shared toy stack (tests/support/stack.py) with a 32 px refiner; real CLI calls and folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, make_dit_run, refiner_env

from repackctl.errors import ConfigError, DataError

REFINER = "refine-f35"
RUN = "dit-f35"
SAMPLE = ["sample", "-r", RUN, "-n", "4", "--steps", "2", "--device", "cpu"]

env = refiner_env(REFINER)


@pytest.fixture
def replaced(env):
    """Run RUN sampled and its samples refined, then removed and trained again (other weights,
    the same checkpoint name); yields (env, samples folder, refined folder)."""
    make_dit_run(env["runs"], RUN, seed=1)
    cli_ok(*SAMPLE)
    (src,) = Path(env["samples"]).iterdir()
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, "--device", "cpu")
    refined = src.parent / f"{src.name}--{REFINER}"
    assert refined.is_dir()
    cli_ok("runs", "rm", RUN, "--yes")
    make_dit_run(env["runs"], RUN, seed=2)  # the same name and checkpoint, other weights
    try:
        yield env, src, refined
    finally:
        cli_ok("runs", "rm", RUN, "--yes")  # the shared stack as it was


def test_runs_info_lists_a_refined_folder_of_the_removed_run_apart(replaced):
    env, src, refined = replaced
    info = json.loads(cli_ok("runs", "info", RUN, "--json"))
    assert info["samples"] == [], info
    assert info["samples_of_other_runs"] == sorted([src.name, refined.name]), info
    text = cli_ok("runs", "info", RUN)
    assert f"samples of another run of this name {refined.name}" in text, text

    # an unfinished refined folder (no card) records the weights of the samples it refines…
    settings = json.loads((refined / ".sample-settings.json").read_text())
    made = json.loads((src / ".sample-settings.json").read_text())
    assert settings["checkpoint_sha256"] == made["checkpoint_sha256"], settings
    assert settings["weights"] == made["weights"], settings
    (refined / "protocol.json").unlink()
    info = json.loads(cli_ok("runs", "info", RUN, "--json"))
    assert info["samples_of_other_runs"] == sorted([src.name, refined.name]), info
    # …and one started by an earlier version (no record) is traced to its source folder
    del settings["checkpoint_sha256"], settings["weights"]
    (refined / ".sample-settings.json").write_text(json.dumps(settings))
    info = json.loads(cli_ok("runs", "info", RUN, "--json"))
    assert info["samples_of_other_runs"] == sorted([src.name, refined.name]), info


def test_evaluate_a_run_name_refuses_the_samples_of_the_removed_run(replaced):
    env, src, refined = replaced
    for root in ([], ["--samples-root", env["samples"]]):
        out = cli_refused(DataError.exit_code, "evaluate", "fid", RUN, *root, *FD_SCORE)
        assert refined.name in out and "another run" in out, out
        assert "--samples N" in out or "sample" in out, out
    assert not (refined / "metrics.json").exists() and not (src / "metrics.json").exists()
    # with no source the newest folder is scored, and said to be the earlier run's
    out = cli_ok("evaluate", "fid", *FD_SCORE)
    assert f"newest samples folder is {refined}" in out, out
    assert "Warning:" in out and f"made by an earlier run {RUN}" in out, out
    # the refined folder itself, named, is scored as what its card says it is
    cli_ok("evaluate", "fid", str(refined), *FD_SCORE)


def test_evaluate_a_run_name_takes_its_own_samples_not_the_removed_runs(replaced):
    env, src, refined = replaced
    cli_ok(*SAMPLE, "--seed", "5")  # the new run's own samples (another folder), made first
    own = next(p for p in Path(env["samples"]).iterdir() if p not in (src, refined))
    (refined / "protocol.json").touch()  # the removed run's folders are the newest
    (src / "protocol.json").touch()
    out = cli_ok("evaluate", "fid", RUN, *FD_SCORE)
    assert f"its newest samples folder is {own}" in out, out
    assert "another run" in out, out  # the folders left out are named
    assert (own / "metrics.json").is_file() and not (refined / "metrics.json").exists()


def test_sample_into_a_folder_of_the_removed_run_does_not_hint_its_checkpoint(replaced):
    env, src, refined = replaced
    out = cli_refused(ConfigError.exit_code, *SAMPLE)
    assert "--checkpoint step-" not in out, out  # the new run's step holds other weights
    assert "replaced" in out or "removed" in out, out
    assert "--out" in out, out
