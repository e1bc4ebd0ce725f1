"""`pack train` rotation keeps the checkpoints cached latents were encoded with (audit s29b, G7).

Rotation kept the step folders other runs decode with (a DiT's record), not those whose latents
`pack encode` wrote into the cache before any DiT run existed: a resumed `pack train
--keep-last 1` deleted the checkpoint, and those latents could no longer be decoded. The latents
groups of the run's cache record their pack run and step: rotation keeps those checkpoints too,
named as ``latents <entry>/<group id>``, and rotates the rest.

Real runs through the command line on a patchpix cache: pack train, pack encode, pack train.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry
from repackctl.train.checkpoint import list_checkpoints

ENTRY = "builtin-n16--train--32px"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16"]
TINY = ["--batch-size", "4", "-c", "4", "--ch", "8", "--disc-channels", "8", "--image-every", "0"]

base_cache, cache = patchpix_fixtures("s29b-latents-in-use")


def test_a_checkpoint_cached_latents_were_encoded_with_is_kept(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(runs))
    every = ["--ckpt-every", "2", "--device", "cpu"]
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, *every)
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu")  # latents of step 2, no DiT yet
    (gid,) = DatasetEntry.open(str(cache), ENTRY).latent_ids()
    out = cli_ok("pack", "train", "--name", "pk", "--steps", "6", "--keep-last", "1", *every)
    steps = [p.name for p in list_checkpoints(runs / "pk")]
    assert steps == ["step-0000002", "step-0000006"], out  # HEAD: step 2 deleted, 4 rotated
    assert f"step-0000002 by latents {ENTRY}/{gid}" in out, out
    group = DatasetEntry.open(str(cache), ENTRY).latents(gid)
    assert Path(group.attrs["pack_checkpoint"]).is_dir()  # the latents still decode with it
