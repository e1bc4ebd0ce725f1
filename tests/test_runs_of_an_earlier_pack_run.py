"""A DiT trained on the latents of a pack run removed and trained again under its name does not
use the new run.

`runs info` (used by), `runs rm` (its question and its --yes warning) and a pack run's rotation
name the DiT, refiner and t2i runs that decode with the pack run. A run was matched to it by
the checkpoint path or the pack id's run name and step only, so after `runs rm pk` and a new
`pack train --name pk`, a DiT trained on the first run's latents was said to use the new run:
`runs info pk` listed it, `runs rm pk` asked and warned about it, and rotation kept the new run's
checkpoint of that step for it, while sampling that DiT with the new run is refused (its pack id
ends with the sha256 of other weights). The pack id must name the weights the step folder
records, the rule the latents groups follow (tests/pack/test_latents_of_an_earlier_run.py).

Real runs through the command line on a patchpix cache: pack train, pack encode, train dit,
runs rm, pack train again, runs info / runs rm / pack train --keep-last, sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused, runner

from repackctl.cli.app import app
from repackctl.train.checkpoint import list_checkpoints

SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16"]
TINY = ["--batch-size", "4", "-c", "4", "--disc-channels", "8", "--image-every", "0"]
EVERY = ["--ckpt-every", "2", "--device", "cpu"]
DIT = ["train", "dit", "--size", "tiny", "--steps", "2", "--image-every", "0", "--device", "cpu"]

base_cache, cache = patchpix_fixtures("s30b-runs-earlier-pack-run")


@pytest.fixture
def earlier(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pack run ``pk`` (2 steps) encoded into ``cache``, a DiT ``d`` trained on its latents,
    then ``pk`` removed (which names ``d``: the rule still finds the run it was trained on)."""
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--ch", "8", *EVERY)
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")
    cli_ok(*DIT, "--name", "d", "--pack-run", "pk")
    data = json.loads(cli_ok("runs", "info", "pk", "--json"))
    assert data["used_by"] == ["d (dit)"], data
    out = cli_ok("runs", "rm", "pk", "--yes")
    assert "Warning: 1 run uses pack run pk and cannot sample without it" in out, out
    return tmp_path / "runs"


def test_info_and_rm_of_a_new_run_of_the_name_leave_the_old_dit_out(earlier: Path) -> None:
    from repackctl.pack.task import checkpoints_in_use
    from repackctl.runs import dependent_runs

    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--ch", "16", *EVERY)
    refused = cli_refused(7, "sample", "--run", "d", "-n", "2", "--device", "cpu")
    assert "is not the one the DiT was trained on" in refused, refused  # it really does not

    data = json.loads(cli_ok("runs", "info", "pk", "--json"))
    assert data["used_by"] == [], data  # HEAD: ["d (dit)"]
    assert "used by" not in cli_ok("runs", "info", "pk")
    res = runner.invoke(app, ["runs", "rm", "pk"], input="n\n")
    said = " ".join(res.output.split())
    assert "d (dit)" not in said and "anyway?" not in said, said  # HEAD: asked about d
    assert res.exit_code == 1 and "nothing removed" in said, said

    run = earlier / "pk"
    assert dependent_runs(run) == [] and checkpoints_in_use(run) == {}  # rotation's view
    out = cli_ok("runs", "rm", "pk", "--yes")
    assert "Warning" not in out and not run.exists(), out  # HEAD: warned about d


def test_rotation_of_a_new_run_of_the_name_keeps_no_step_for_the_old_dit(earlier: Path) -> None:
    out = cli_ok(
        "pack", "train", *SRC, "--name", "pk", "--steps", "6", "--keep-last", "1", *TINY,
        "--ch", "16", *EVERY,
    )  # fmt: skip
    steps = [p.name for p in list_checkpoints(earlier / "pk")]
    assert steps == ["step-0000006"], out  # HEAD: step 2 kept "by d"
    assert "kept beside" not in out, out


def test_a_dit_of_the_run_itself_still_keeps_its_step(earlier: Path, cache: Path) -> None:
    """The run trained again, with a DiT of its own: that DiT (not the first run's) is named,
    and rotation keeps its step."""
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--ch", "16", *EVERY)
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")
    cli_ok(*DIT, "--name", "d2", "--pack-run", "pk")
    data = json.loads(cli_ok("runs", "info", "pk", "--json"))
    assert data["used_by"] == ["d2 (dit)"], data  # HEAD: ["d (dit)", "d2 (dit)"]
    out = cli_ok(
        "pack", "train", *SRC, "--name", "pk", "--steps", "6", "--keep-last", "1", *TINY,
        "--ch", "16", *EVERY,
    )  # fmt: skip
    steps = [p.name for p in list_checkpoints(earlier / "pk")]
    assert steps == ["step-0000002", "step-0000006"], out
    assert "step-0000002 by d2, latents" in out and "by d," not in out, out
