"""Audit s28 of `train dit` resumes (helper F3).

1. A resume that the engine refused (its sample order would change: ``--seed 1 --allow-change
   seed``) had already written ``resume: setting: old → new`` lines to the run's log.txt: the
   log said changes were made that were not. The lines are now written by the engine once it
   accepted the resume.
2. ``--show-config`` of an existing run skipped the step that keeps the values a run started
   without (a paper-preset run from before ``tf32`` / ``cos_norm_floor`` existed): it showed
   the preset's values, which the resume does not use.
3. The ``dit.flip`` warning of an entry extracted with ``--no-flips`` came on every resume, and
   also when nothing was trained: it is said once, when the run starts.

Real CLI runs on a real cache with packed latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--device", "cpu", "--image-every", "0"]


def test_a_refused_resume_writes_no_resume_lines_to_log_txt(tmp_path, tmp_path_factory):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)  # 16 samples: held in memory
    log = tmp_path / "runs" / "d" / "log.txt"
    cli_ok(*DIT, "--name", "d", "--steps", "1")
    before = log.read_text()
    more = ["--steps", "2", "--ckpt-every", "7", "--seed", "1", "--allow-change", "seed"]
    out = cli_refused(CheckpointError.exit_code, *DIT, "--name", "d", *more)
    assert "order of samples" in out, out
    assert "resume:" not in log.read_text(), log.read_text()
    assert log.read_text().startswith(before)
    # the same resume without the refused change: its lines are in the log
    out = cli_ok(*DIT, "--name", "d", "--steps", "2", "--ckpt-every", "7")
    assert "resume: dit.ckpt_every: 500 → 7" in out, out
    assert "resume: dit.ckpt_every: 500 → 7" in log.read_text()
    assert "seed: 0 → 1" not in log.read_text()


def _started_before_tf32(run: Path) -> None:
    """The run's stored settings as a version before ``tf32`` and ``cos_norm_floor`` wrote them
    (TF32 always on, the cosine floor always 0.01)."""
    path = run / "config.json"
    config = json.loads(path.read_text())
    record = config["extra"]["settings"]
    for name in ("tf32", "cos_norm_floor"):
        del record["values"]["dit"][name]
        record["sources"].pop(f"dit.{name}", None)
    config.pop("config_sha256")  # as that version wrote it
    path.write_text(json.dumps(config))


def test_show_config_of_an_older_paper_run_shows_the_values_its_resume_uses(
    tmp_path, tmp_path_factory
):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    paper = [*DIT, "--preset", "paper", "--name", "old"]
    cli_ok(*paper, "--steps", "1")
    run = tmp_path / "runs" / "old"
    _started_before_tf32(run)
    shown = cli_ok(*paper, "--steps", "2", "--show-config")
    assert "exists: the values it resumes with" in shown, shown
    assert "dit.tf32 = True # stored run config" in shown, shown
    assert "dit.cos_norm_floor = 0.01 # stored run config" in shown, shown
    # what the resume really trains with
    out = cli_ok(*paper, "--steps", "2")
    assert "dit.tf32: kept True" in out, out
    values = json.loads((run / "config.json").read_text())["extra"]["settings"]["values"]["dit"]
    assert (values["tf32"], values["cos_norm_floor"]) == (True, 0.01)


FLAT = "builtin-n8--train--32px"  # extracted with --no-flips: latents of one flip slot
WARNING = "Warning: dit.flip is on (default)"


def test_the_no_flips_warning_is_said_once_when_the_run_starts(tmp_path, tmp_path_factory):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", "8", "--no-flips"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "8", "--num-workers", "0")
    cli_ok("pack", "encode", "--run", "pk", "--entry", FLAT, "--device", "cpu")
    flat = [*DIT, "--entry", FLAT, "--name", "f"]
    out = cli_ok(*flat, "--steps", "1")
    assert out.count(WARNING) == 1 and "trains without flips" in out, out
    out = cli_ok(*flat, "--steps", "1")  # nothing to train
    assert "nothing to train" in out and "Warning" not in out, out
    out = cli_ok(*flat, "--steps", "2")  # a resume that trains
    assert "resumed at 1" in out and "Warning" not in out, out
