"""`refine train` and `evaluate probe` refuse training features of another precision.

A pack run records the precision of the features it was trained on, and `pack encode`,
`evaluate recon` and the held-out side of `evaluate probe` refuse features computed in another
one. Features removed (`cache rm --features`) and extracted again in bf16 keep their id, and
`refine train` built its triplets from them (reconstructions of tokens the pack model never
saw) with exit 0, as `evaluate probe` trained its three probes on them. Both are now an
`Error:` naming the two precisions before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

SRC = ["--encoder", "patchpix", "--resolution", "32", "--num-workers", "0", "--device", "cpu"]
TRAIN = "builtin-n16--train--32px"


def _refeatured_stack(tmp_path: Path) -> list[str]:
    """A 1-step pack run ``pk`` on 16 fp32 train images (and 3 fp32 val images), whose training
    features were then removed and extracted again in bf16; the ``--cache``/``--runs`` flags."""
    where = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    ext = ["extract", *SRC, "--chunk", "8", "--shard", "8", *where[:2]]
    cli_ok(*ext, "-n", "16")
    cli_ok(*ext, "-n", "3", "--split", "val")
    pack = ["pack", "train", *SRC[:4], "-n", "16", "--steps", "1", "--batch-size", "4", "-c", "4"]
    cli_ok(*pack, "--ch", "8", "--name", "pk", "--image-every", "0", *where)
    fid = next(iter(DatasetEntry.open(where[1], TRAIN).group["features"]))
    cli_ok("cache", "rm", TRAIN, "--features", fid, "--yes", *where[:2])
    cli_ok(*ext, "-n", "16", "--precision", "bf16")
    return where


def test_refine_train_and_probe_refuse_refeatured_training_entry(tmp_path: Path) -> None:
    where = _refeatured_stack(tmp_path)
    refine = ["refine", "train", "--pack-run", "pk", "--name", "rf", "--steps", "1"]
    out = cli_refused(6, *refine, "--base-channels", "8", "--device", "cpu", *where)
    assert "trained on features computed in fp32" in out and "computed in bf16" in out, out
    assert "triplets" not in DatasetEntry.open(where[1], TRAIN).group  # nothing written
    assert not (tmp_path / "runs" / "rf" / "checkpoints").exists()

    out = cli_refused(6, "evaluate", "probe", "--run", "pk", "--device", "cpu", *where)
    assert "trained on features computed in fp32" in out and "computed in bf16" in out, out
    assert not list((tmp_path / "runs" / "pk").rglob("probe-*"))
