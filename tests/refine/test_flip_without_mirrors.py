"""`refine train --flip` on features extracted with `--no-flips` is refused.

The refiner mirrors a triplet by taking the cached tokens of the mirrored image; features
extracted with `extract --no-flips` hold one flip only, so `--flip` was accepted, recorded as on
in the run, and mirrored nothing. Now a `--flip` the user gives there is an `Error:` before
anything is written; the default (not given) trains on the images as they are, as before.
"""

from __future__ import annotations

from pathlib import Path

from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

SRC = ["--encoder", "patchpix", "--resolution", "32", "--num-workers", "0", "--device", "cpu"]


def test_flip_given_for_unmirrored_features_is_refused(tmp_path: Path) -> None:
    where = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    cli_ok("extract", *SRC, "-n", "16", "--chunk", "8", "--shard", "8", "--no-flips", *where[:2])
    pack = ["pack", "train", *SRC[:4], "-n", "16", "--steps", "1", "--batch-size", "4", "-c", "4"]
    cli_ok(*pack, "--ch", "8", "--name", "pk", "--image-every", "0", *where)

    refine = ["refine", "train", "--pack-run", "pk", "--steps", "1", "--base-channels", "8"]
    refine += ["--batch-size", "4", "--device", "cpu", *where]
    out = cli_refused(2, *refine, "--name", "rf", "--flip")
    assert "refine.flip is on (from flag)" in out and "--no-flips" in out, out
    entry = DatasetEntry.open(where[1], "builtin-n16--train--32px")
    assert "triplets" not in entry.group  # refused before anything was written
    assert not (tmp_path / "runs" / "rf").exists()

    cli_ok(*refine, "--name", "rf-plain")  # flip left at its default: trains unmirrored
    assert (tmp_path / "runs" / "rf-plain" / "checkpoints" / "step-0000001").is_dir()
