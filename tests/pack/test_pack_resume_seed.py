"""`pack train --name pk --seed 1 --allow-change seed` on a run of seed-drawn encoder weights
(audit s29b, G7).

A resume worked the run's features id out again from its settings and this seed: patchpix
draws its weights from the seed, so it asked for features never extracted and was refused with
"no features 'patchpix--final--32px--<other id>'" and the hint to extract them (which would
train on other features). A resume now takes the features its checkpoint records where its
settings name the same data: a seed change reaches the engine's refusal, which names the real
reason (the order of samples) and the way back (--seed 0). Nothing is written.

Real runs through the command line on a patchpix cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.train.checkpoint import list_checkpoints

SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16"]
TINY = ["--batch-size", "4", "-c", "4", "--ch", "8", "--disc-channels", "8", "--image-every", "0"]

base_cache, cache = patchpix_fixtures("s29b-resume-seed")


def test_a_resume_with_another_seed_is_refused_for_what_a_seed_changes(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(runs))
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--device", "cpu")
    before = sorted(p.name for p in (runs / "pk").rglob("*"))
    more = ["--name", "pk", "--steps", "4", "--seed", "1", "--allow-change", "seed"]
    for again in ([], SRC):  # the data kept from the start, or named again
        out = cli_refused(7, "pack", "train", *more, *again, "--device", "cpu")
        assert "no features" not in out, out  # HEAD: the features id seed 1 draws
        assert "trained with seed 0 (now 1)" in out and "order of samples" in out, out
        assert "Hint: resume with --seed 0" in out, out
    assert sorted(p.name for p in (runs / "pk").rglob("*")) == before
    cli_ok("pack", "train", "--name", "pk", "--steps", "3", "--device", "cpu")  # as started
    assert [p.name for p in list_checkpoints(runs / "pk")] == ["step-0000002", "step-0000003"]
