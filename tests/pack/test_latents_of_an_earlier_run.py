"""Latents of a pack run removed and trained again under its name are not the new run's.

`runs info`, `runs rm` and checkpoint rotation name the cached latents groups a pack run's
checkpoints encoded (they decode only with it). A group was matched to the run by run name and
step only, so after `runs rm pk` and a new `pack train --name pk`, the first run's latents were
said to need the new run: `runs info pk` listed them under "used by", `runs rm pk` warned that
they could no longer be decoded, and rotation kept the new run's step folder of that step for
them. The pack id `pack encode` names a group with ends with the sha256 of the weights it
encoded with; the step folder's ``state.json`` records the sha256 of its weights: they must agree.

Real runs through the command line on a patchpix cache: pack train, pack encode, runs rm,
pack train again, runs info / runs rm / pack train --keep-last.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, runner

from repackctl.cache.store import DatasetEntry
from repackctl.cli.app import app
from repackctl.train.checkpoint import list_checkpoints

ENTRY = "builtin-n16--train--32px"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16"]
TINY = ["--batch-size", "4", "-c", "4", "--disc-channels", "8", "--image-every", "0"]
EVERY = ["--ckpt-every", "2", "--device", "cpu"]

base_cache, cache = patchpix_fixtures("s30-latents-earlier-run")


@pytest.fixture
def earlier(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pack run ``pk`` (2 steps) encoded into ``cache``, then removed: the group it left."""
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--ch", "8", *EVERY)
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")
    (gid,) = DatasetEntry.open(str(cache), ENTRY).latent_ids()
    cli_ok("runs", "rm", "pk", "--yes")
    return f"latents {ENTRY}/{gid}"


def test_info_and_rm_of_a_new_run_of_the_name_leave_the_old_latents_out(
    earlier: str, cache: Path, tmp_path: Path
) -> None:
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, "--ch", "16", *EVERY)
    data = json.loads(cli_ok("runs", "info", "pk", "--json"))
    assert data["used_by_latents"] == [], data  # HEAD: the first run's group
    res = runner.invoke(app, ["runs", "rm", "pk"], input="n\n")
    said = " ".join(res.output.split())
    assert "cached latents group" not in said and earlier not in said, said  # HEAD: named it
    assert res.exit_code == 1 and "nothing removed" in said, said

    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")  # the new run's own latents
    ids = DatasetEntry.open(str(cache), ENTRY).latent_ids()
    (new,) = [f"latents {ENTRY}/{g}" for g in ids if f"latents {ENTRY}/{g}" != earlier]
    from repackctl.pack.task import latents_encoded_with  # the library's, for `runs`

    run = tmp_path / "runs" / "pk"
    found, unread = latents_encoded_with(run, "pack", str(cache))
    assert found == [f"{new} in {cache.resolve()} (encoded with step-0000002)"], found
    assert unread == [] and latents_encoded_with(run, "dit", str(cache)) == ([], [])


def test_rotation_of_a_new_run_of_the_name_does_not_keep_a_step_for_the_old_latents(
    earlier: str, tmp_path: Path
) -> None:
    out = cli_ok(
        "pack", "train", *SRC, "--name", "pk", "--steps", "6", "--keep-last", "1", *TINY,
        "--ch", "16", *EVERY,
    )  # fmt: skip
    steps = [p.name for p in list_checkpoints(tmp_path / "runs" / "pk")]
    assert steps == ["step-0000006"], out  # HEAD: step 2 kept "by" the first run's latents
    assert earlier not in out, out
