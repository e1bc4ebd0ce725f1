"""A run killed after its last checkpoint, before its closing drawing of ``curves.png``, gets the
figure from the rerun that finds nothing left to train (audit: `train t2i` killed just after
``done`` never drew it again). The redrawn figure equals the one the finished run drew."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok
from support.stack import shared_stack

pytestmark = pytest.mark.usefixtures("one_thread")


def _dit() -> str:
    return cli_ok("train", "dit", "--size", "tiny", "-b", "8", "--steps", "4", "--ckpt-every",
                  "2", "--image-every", "0", "--name", "d", "--device", "cpu")  # fmt: skip


def test_train_dit_rerun_draws_the_missing_or_stale_curves(tmp_path, tmp_path_factory):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)  # runs/pk and its latents
    _dit()
    curves = tmp_path / "runs" / "d" / "curves.png"
    drawn = curves.read_bytes()
    curves.unlink()  # the kill came before the closing drawing
    assert "nothing to train" in _dit()
    assert curves.read_bytes() == drawn
    # an earlier checkpoint's drawing left in place (older than the metrics) is drawn again
    metrics = (tmp_path / "runs" / "d" / "metrics.jsonl").stat().st_mtime_ns
    os.utime(curves, ns=(metrics - 10**9, metrics - 10**9))
    _dit()
    assert curves.stat().st_mtime_ns >= metrics
    # an up-to-date figure is left as it is: nothing to train writes nothing
    before = curves.stat().st_mtime_ns
    _dit()
    assert curves.stat().st_mtime_ns == before


def test_refine_train_rerun_draws_the_missing_curves(tmp_path_factory):
    stack = shared_stack(tmp_path_factory)
    args = ["refine", "train", "--pack-run", "pack-tiny", "--name", "refine-curves", "--steps",
            "2", "--batch-size", "4", "--base-channels", "8", "--disc-channels", "8",
            "--ckpt-every", "2", "--cache", stack["cache"], "--runs", stack["runs"],
            "--device", "cpu"]  # fmt: skip
    cli_ok(*args)
    curves = Path(stack["runs"]) / "refine-curves" / "curves.png"
    drawn = curves.read_bytes()
    curves.unlink()
    assert "nothing to train" in cli_ok(*args)
    assert curves.read_bytes() == drawn


def test_pack_train_rerun_draws_the_missing_curves(tmp_path, tmp_path_factory):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)  # runs/pk: 4 steps
    curves = tmp_path / "runs" / "pk" / "curves.png"
    drawn = curves.read_bytes()
    curves.unlink()
    out = cli_ok("pack", "train", "--name", "pk", "--steps", "4", "--device", "cpu")
    assert "nothing to train" in out, out
    assert curves.read_bytes() == drawn
